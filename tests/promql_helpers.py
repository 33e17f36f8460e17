"""Run a throwaway real Prometheus on backfilled data and ask it PromQL questions.

Backfilling (`promtool tsdb create-blocks-from openmetrics`) instead of scraping means the data is queryable as
soon as the server is ready: no scrape interval and no initial scrape delay to wait for. The server is the
harness's (harness.prometheus.prometheus_stack with no rules and no jobs), started on the TSDB `backfill` writes.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

HTTP_TIMEOUT_S = 10.0

# Loopback only: an `http_proxy` set in CI must not capture requests to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def require_binaries(*names: str) -> list[str]:
    """Paths of the Prometheus binaries. A missing one fails the test (CI installs them): it is a broken
    environment, and skipping would let the comparison silently stop running.
    """
    paths = [shutil.which(name) for name in names]
    missing = [name for name, path in zip(names, paths, strict=True) if path is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found on PATH: these system tests need the real Prometheus binaries "
            "(Debian/Ubuntu: `apt-get install prometheus`, which provides both `prometheus` and `promtool`).",
            pytrace=False,
        )
    return [path for path in paths if path is not None]


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def openmetrics_line(name: str, labels: Mapping[str, str], value: float, timestamp_s: int) -> str:
    """One sample line. `repr` is the shortest round-tripping spelling, so Go parses back the very same float."""
    rendered = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
    return f"{name}{{{rendered}}} {format_float(value)} {timestamp_s}"


def format_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def backfill(promtool: str, lines: Iterable[str], workdir: Path) -> Path:
    """Write the samples as OpenMetrics text and turn them into a TSDB block in `workdir/tsdb`, the TSDB that
    prometheus_stack(workdir, ...) serves; returns the TSDB directory."""
    source = workdir / "samples.om"
    source.write_text("".join(f"{line}\n" for line in lines) + "# EOF\n")
    tsdb = workdir / "tsdb"
    result = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(tsdb)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"promtool backfill failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return tsdb


def _get_json(url: str) -> dict:
    with _OPENER.open(url, timeout=HTTP_TIMEOUT_S) as response:
        return json.load(response)


def query_vector(base_url: str, promql: str, at_s: int) -> list[tuple[dict[str, str], float]]:
    """Instant query; each result as (labels, value). Values come as strings ("NaN", "+Inf") and parse exactly."""
    params = urllib.parse.urlencode({"query": promql, "time": str(at_s)})
    body = _get_json(f"{base_url}/api/v1/query?{params}")
    if body.get("status") != "success" or body["data"]["resultType"] != "vector":
        raise RuntimeError(f"unexpected answer to {promql!r}: {body}")
    return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]


def build_info(base_url: str) -> dict[str, str]:
    return _get_json(f"{base_url}/api/v1/status/buildinfo")["data"]
