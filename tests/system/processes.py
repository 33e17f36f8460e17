"""Real servers for the system tier: Prometheus, Alertmanager and the exporter as subprocesses on loopback."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from demo.processes import free_port, running

__all__ = ["binary", "exporter_cmd", "free_port", "running"]


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus and prometheus-alertmanager packages (.ci/run does)"
    return path


def exporter_cmd(config: Path, listen: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spec_exporter",
        "--config.file",
        str(config),
        "--web.listen-address",
        listen,
        "--log.level",
        "warn",
    ]
