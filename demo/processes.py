"""Subprocesses on loopback for the demo and the system and real test tiers: start, wait for ready, stop."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    """True once `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


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
