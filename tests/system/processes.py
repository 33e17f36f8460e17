"""Real servers for the system tier: Prometheus, Alertmanager and the exporter as subprocesses on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus and prometheus-alertmanager packages (.ci/run does)"
    return path


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running(cmd: list[str], ready_url: str, log: Path, timeout: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd`, wait (bounded) until `ready_url` answers 200, and stop it afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + timeout
            while not _ready(ready_url):
                assert proc.poll() is None, f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{cmd[0]} not ready in {timeout}s:\n{log.read_text()[-3000:]}"
                time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
