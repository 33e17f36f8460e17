"""What every real-tier test reads the same way: HTTP to loopback, a /metrics body as samples, and waiting for
the exporter's next polls."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from harness.wait import until
from mixin.params import Params

# Every wait of the tier ends when its event happens; the budgets only bound a failure, and hold on a busy 2-core
# machine: the exporter polls every second (a poll, even a slow one, within a minute), a band alert needs a few
# dozen requests of a vLLM that may answer one every few seconds.
POLL_BUDGET = 60.0
BAND_ALERT_BUDGET = 600.0

# The band alert's rules for both real-tier tests of it, with `for`s short enough for a test. The rate window spans
# a whole cycle of their traffic (ten requests, one hot) even when a busy machine takes seconds a request: a
# window holding the hot request and only two or three greedy ones weighs the hot one enough to pull the model's
# average towards 0.5, where the alert (band below 0.5, model at or above it) cannot fire.
BAND_PARAMS = Params(
    rate_window="60s",
    for_band="2s",
    for_net_negative="2s",
    min_draft_tokens_per_second=1,
    min_band_draft_tokens_per_second=0.1,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http(url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> bytes:
    # A new connection per request (urllib sends Connection: close): with two API server processes on one
    # SO_REUSEPORT socket, the kernel picks the process per connection.
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=120) as r:
        return bytes(r.read())


def samples(url: str) -> Samples:
    """Every sample of `url`/metrics through prometheus_client's own parser: (name, sorted labels) → value."""
    out: Samples = {}
    for family in text_string_to_metric_families(http(f"{url}/metrics").decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(s: Samples, name: str, **match: str) -> float:
    return sum(
        v for (n, labels), v in s.items() if n == name and all(dict(labels).get(k) == x for k, x in match.items())
    )


def settle(exporter: str) -> None:
    """Wait (bounded) until the exporter has polled twice since now: its view then includes everything sent."""

    def polls() -> float:
        return total(samples(exporter), "spec_decode_exporter_last_success_timestamp_seconds")

    for _ in range(2):
        seen = polls()
        until(lambda s=seen: polls() != s, POLL_BUDGET, "the exporter's next poll", lambda s=seen: f"last at {s}")


def probe(*args: str, timeout: float = 600) -> tuple[dict[str, Any], str]:
    """`spec-exporter probe ... --output json` as a user runs it: its document, and its stdout as printed."""
    result = subprocess.run(
        [sys.executable, "-m", "spec_exporter", "probe", *args, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)), result.stdout
