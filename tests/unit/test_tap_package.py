"""The tap package's import rule: vLLM loads the middleware inside its own API server, where only the standard
library, prometheus_client and pydantic are sure to be installed. So spec_exporter/tap/ (all but the proxy, which
runs in the exporter's own process) and the public `spec_exporter.middleware` import nothing else but the tap."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TAP = ROOT / "spec_exporter" / "tap"
# The proxy front end runs in the exporter (aiohttp, structlog): the one module the rule does not cover.
EXEMPT = {TAP / "proxy.py"}
ALLOWED_THIRD_PARTY = {"prometheus_client", "pydantic"}
MODULES = sorted([*(p for p in TAP.glob("*.py") if p not in EXEMPT), ROOT / "spec_exporter" / "middleware.py"])


def imported(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the module, at any depth (function-level ones too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.append((node.lineno, node.module or ""))
            else:
                # Relative: resolve against the module's own package.
                package = path.relative_to(root).with_suffix("").parts[:-1]
                base = package[: len(package) - (node.level - 1)]
                out.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
    return out


def allowed(module: str) -> bool:
    top = module.partition(".")[0]
    return (
        top in sys.stdlib_module_names
        or top == "__future__"
        or top in ALLOWED_THIRD_PARTY
        or module == "spec_exporter.tap"
        or (module.startswith("spec_exporter.tap.") and module != "spec_exporter.tap.proxy")
    )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_the_standard_library_prometheus_client_pydantic_and_the_tap(path: Path) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}" for line, module in imported(path) if not allowed(module)
    ]
    assert bad == [], "\n".join(bad)


def test_the_rule_sees_every_kind_of_import(tmp_path: Path) -> None:
    # The checker itself: a forbidden import at the top, inside a function, and relative out of the package.
    module = tmp_path / "spec_exporter" / "tap" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("import yaml\n\ndef f():\n    from aiohttp import web\n\nfrom ..config import Settings\n")
    assert sorted(m for _, m in imported(module, tmp_path) if not allowed(m)) == [
        "aiohttp",
        "spec_exporter.config",
        "yaml",
    ]
    assert len(MODULES) >= 9 and all(allowed(m) for m in ("json", "pydantic.fields", "spec_exporter.tap.metrics"))
