"""Dashboards: generated from mixin/dashboards.py, valid against Grafana's own schema, and built only from
metrics the exporter (or its recording rules) provide."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mixin.dashboards import dashboards
from mixin.generate import render_dashboards
from spec_exporter import catalog

ROOT = Path(__file__).parent.parent
SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "grafana" / "dashboard.schema.json").read_text())


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    rendered = render_dashboards()
    assert sorted(rendered) == sorted(p.name for p in (ROOT / "dashboards").glob("*.json"))
    for name, text in rendered.items():
        assert (ROOT / "dashboards" / name).read_text() == text, f"dashboards/{name} is stale: run `python -m mixin`"


@pytest.mark.parametrize("dashboard", dashboards(), ids=lambda d: d["uid"])
def test_valid_against_grafanas_dashboard_schema(dashboard: dict[str, Any]) -> None:
    errors = sorted(jsonschema.Draft7Validator(SCHEMA).iter_errors(dashboard), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_schema_check_catches_a_broken_dashboard() -> None:
    broken = dashboards()[0] | {"panels": [{"type": "timeseries", "gridPos": {"h": "tall"}}]}
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(broken))


@pytest.mark.parametrize("dashboard", dashboards(), ids=lambda d: d["uid"])
def test_conventions(dashboard: dict[str, Any]) -> None:
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert variables[0] == "datasource"
    assert {"namespace", "pod", "model_name", "temperature_band"} <= set(variables)
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["description"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for expr in exprs(dashboard):
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", expr


def test_queries_use_only_exported_metrics() -> None:
    exported = set()
    for spec in catalog.ALL:
        exported.add(spec.exposed_name)
        if spec.type in ("histogram", "summary"):
            exported |= {spec.name + "_bucket", spec.name + "_count", spec.name + "_sum"}
    used = {m for d in dashboards() for e in exprs(d) for m in re.findall(r"\bspec_decode_[a-z0-9_]+", e)}
    assert used and used <= exported, used - exported
