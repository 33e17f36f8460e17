"""Subprocesses on loopback: start, wait (bounded) for ready, stop; the commands for Prometheus, Alertmanager and
the exporter."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from harness.ports import answers


@contextlib.contextmanager
def running(cmd: list[str], ready_url: str, log: Path, timeout: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd` with its output in `log`, wait (bounded) until `ready_url` answers, stop it afterwards."""
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
        while not answers(ready_url):
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} not ready in {timeout:.0f}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prometheus_cmd(config: Path, tsdb: Path, listen: str, binary: str = "prometheus") -> list[str]:
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={tsdb}", f"--web.listen-address={listen}"]


def alertmanager_cmd(config: Path, storage: Path, listen: str, binary: str = "prometheus-alertmanager") -> list[str]:
    # No clustering: a single Alertmanager on loopback.
    return [
        binary,
        f"--config.file={config}",
        f"--storage.path={storage}",
        f"--web.listen-address={listen}",
        "--cluster.listen-address=",
    ]


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus and prometheus-alertmanager packages (.ci/run does)"
    return path


def exporter_cmd(config: Path, listen: str, *extra: str) -> list[str]:
    """The exporter as a subprocess of this interpreter, logging warnings only."""
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
        *extra,
    ]
