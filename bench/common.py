"""What every benchmark reports alongside its numbers: the machine, the date, where results go."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """The commit measured, and the package files that differ from it (benchmarks run on the working tree)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            ).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "spec_exporter").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or "unknown", "dirty_package_files": dirty}


def machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "prometheus_client": _version("prometheus-client"),
        "aiohttp": _version("aiohttp"),
        "loadavg_at_start": [round(x, 2) for x in load],
        "argv": sys.argv,
        "git": git_state(),
    }


def machine_line(m: dict[str, Any]) -> str:
    g = m["git"]
    dirty = f" + uncommitted changes to {', '.join(g['dirty_package_files'])}" if g["dirty_package_files"] else ""
    return (
        f"{m['date_utc']} · nproc {m['nproc']} · {m['cpu_model']} · {m['python']} · "
        f"prometheus_client {m['prometheus_client']} · load avg {m['loadavg_at_start'][0]} · "
        f"commit {g['commit']}{dirty}"
    )


def write_results(kind: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{kind}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def markdown_table(header: list[str], rows: list[list[str]], align_right_from: int = 1) -> str:
    sep = ["---" if i < align_right_from else "---:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
