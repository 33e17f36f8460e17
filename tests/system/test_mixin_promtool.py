"""The shipped rules through promtool (check and the unit tests in alerts/tests) and the runbooks silence on a real
Alertmanager.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mixin.generate import RULE_FILES
from tests.unit.test_mixin import ALERTS, ROOT, _ts


def test_promtool_check_rules_is_clean() -> None:
    files = [str(ALERTS / name) for name in RULE_FILES.values()]
    result = subprocess.run([promtool(), "check", "rules", *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", sorted(p.name for p in (ALERTS / "tests").glob("*.test.yaml")))
def test_promtool_unit_tests_pass(test_file: str) -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", test_file], cwd=ALERTS / "tests", capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_runbooks_silence_after_a_deliberate_change_works_on_a_real_alertmanager(tmp_path: Path) -> None:
    """The amtool command docs/runbooks.md gives, run as written against a real Alertmanager: it silences the
    week-over-week alerts of the changed model, for the week the baseline takes, and nothing else."""
    import json
    import urllib.request

    from harness.ports import free_port
    from harness.processes import alertmanager_cmd, running

    runbook = (ROOT / "docs" / "runbooks.md").read_text()
    (command,) = re.findall(r"```sh\n(amtool silence add .*?)\n```", runbook, re.S)
    assert "http://alertmanager:9093" in command
    binaries = [shutil.which(b) for b in ("prometheus-alertmanager", "amtool")]
    assert all(binaries), "prometheus-alertmanager/amtool not found: install Debian's prometheus-alertmanager"
    (tmp_path / "am.yml").write_text("route: {receiver: none}\nreceivers: [{name: none}]\n")
    listen = f"127.0.0.1:{free_port()}"
    url = f"http://{listen}"
    cmd = alertmanager_cmd(tmp_path / "am.yml", tmp_path / "data", listen, binaries[0])
    with running(cmd, f"{url}/-/ready", tmp_path / "am.log", timeout=60):

        def api(path: str, body: object | None = None) -> object:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(f"{url}/api/v2/{path}", data, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read() or b"null")

        alerts = [
            {"labels": {"alertname": a, "severity": "warning", "namespace": "llm", "model_name": m}}
            for a in ("SpecDecodeAcceptanceDropped", "SpecDecodeTailDivergenceWidening")
            for m in ("llama-3.1-8b", "qwen3-8b")
        ] + [{"labels": {"alertname": "SpecDecodeNetNegative", "namespace": "llm", "model_name": "llama-3.1-8b"}}]
        api("alerts", alerts)
        result = subprocess.run(
            ["bash", "-c", command.replace("http://alertmanager:9093", url)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": str(Path(binaries[1]).parent) + ":/usr/bin:/bin", "USER": "oncall"},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        (silence,) = api("silences")
        hours = (_ts(silence["endsAt"]) - _ts(silence["startsAt"])) / 3600
        assert 169 <= hours <= 171, hours
        state = {(a["labels"]["alertname"], a["labels"]["model_name"]): a["status"]["state"] for a in api("alerts")}
    assert state == {
        ("SpecDecodeAcceptanceDropped", "llama-3.1-8b"): "suppressed",
        ("SpecDecodeTailDivergenceWidening", "llama-3.1-8b"): "suppressed",
        ("SpecDecodeAcceptanceDropped", "qwen3-8b"): "active",
        ("SpecDecodeTailDivergenceWidening", "qwen3-8b"): "active",
        ("SpecDecodeNetNegative", "llama-3.1-8b"): "active",
    }


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (.ci/run does)"
    return path
