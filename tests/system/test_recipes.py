"""The bare-metal recipe (deploy/bare-metal): the systemd unit as systemd reads it, its command line and
configuration as the exporter reads them, and the Prometheus configuration (scrape configs and rule files) as
promtool reads it, with the project's rules."""

from __future__ import annotations

import configparser
import shlex
import shutil
import socket
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

from spec_exporter.commands.serve import serve_parser, serve_settings

ROOT = Path(__file__).parents[2]
BARE_METAL = ROOT / "deploy" / "bare-metal"
UNIT = BARE_METAL / "spec-exporter.service"


def unit() -> configparser.ConfigParser:
    # systemd units are ini files whose keys are case-sensitive and may repeat; this one repeats none.
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def exec_start() -> list[str]:
    return shlex.split(unit()["Service"]["ExecStart"])


def installed_exporter() -> str:
    found = shutil.which("spec-exporter", path=sysconfig.get_path("scripts"))
    assert found, "spec-exporter is not installed in this environment (pip install -e .)"
    return found


def test_systemd_verifies_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` checks every key and value, and that ExecStart is executable: the unit's path is
    where the recipe installs the exporter, so the installed one stands in for it. Any warning fails the test."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: apt-get install systemd"
    text = UNIT.read_text().replace(exec_start()[0], installed_exporter(), 1)
    assert text != UNIT.read_text()
    (tmp_path / UNIT.name).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / UNIT.name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr


def test_systemd_analyze_is_the_real_verifier(tmp_path: Path) -> None:
    """An unknown key makes it speak: silence above means the unit is clean, not that nothing was checked."""
    analyze = shutil.which("systemd-analyze")
    assert analyze
    text = UNIT.read_text().replace(exec_start()[0], installed_exporter(), 1)
    (tmp_path / UNIT.name).write_text(text.replace("[Service]\n", "[Service]\nRestartSecs=5s\n", 1))
    result = subprocess.run([analyze, "verify", str(tmp_path / UNIT.name)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'RestartSecs'" in result.stderr


def test_the_units_command_line_and_configuration_are_what_the_exporter_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = unit()["Service"]
    command = exec_start()
    assert command[0] == "/opt/spec-exporter/bin/spec-exporter"
    config = BARE_METAL / "config.yaml"
    args = [a.replace("/etc/spec-exporter/config.yaml", str(config)) for a in command[1:]]
    assert args != command[1:], "the unit reads another configuration file than the recipe's"
    # Environment=TARGET_NAME=%H: systemd puts the host's name there.
    name, value = service["Environment"].split("=", 1)
    assert value == "%H"
    monkeypatch.setenv(name, socket.gethostname())
    settings = serve_settings(serve_parser().parse_args(args))
    (target,) = settings.targets
    assert target.name == socket.gethostname()
    assert "2" in service["RestartPreventExitStatus"].split()


def test_the_recipes_prometheus_config_passes_promtool_with_every_rule_file_and_targets_the_unit_and_vllm(
    tmp_path: Path,
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package"
    config = yaml.safe_load((BARE_METAL / "prometheus.yml").read_text())
    # The rules as the recipe installs them: alerts/ copied where rule_files points.
    (pattern,) = config["rule_files"]
    rules = tmp_path / "spec-decode"
    shutil.copytree(ROOT / "alerts", rules)
    config["rule_files"] = [str(rules / Path(pattern).name)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    checked = [line for line in result.stdout.splitlines() if "SUCCESS" in line and "rules found" in line]
    assert len(checked) == len(list((ROOT / "alerts").glob("*.yaml"))), result.stdout
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ports = {
        name: {t.rsplit(":", 1)[1] for c in job["static_configs"] for t in c["targets"]} for name, job in jobs.items()
    }
    listen = next(a for a in exec_start() if a.startswith("--web.listen-address="))
    assert ports["spec-exporter"] == {listen.rsplit(":", 1)[1]}
    target = yaml.safe_load((BARE_METAL / "config.yaml").read_text())["targets"][0]
    assert ports["vllm"] == {target["url"].rsplit(":", 1)[1]}
    # Every series carries namespace and pod, as a pod's would: the host plays the pod.
    for job in jobs.values():
        assert all("namespace" in c["labels"] for c in job["static_configs"])
        assert [r["target_label"] for r in job["relabel_configs"]] == ["pod"]
