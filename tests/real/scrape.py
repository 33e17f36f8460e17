"""What every real-tier test reads the same way: HTTP to loopback, a /metrics body as samples, and waiting for
the exporter's next polls."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

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

    seen = polls()
    for _ in range(2):
        deadline = time.monotonic() + 30
        while polls() == seen:
            assert time.monotonic() < deadline, "the exporter stopped polling"
            time.sleep(0.2)
        seen = polls()


def firing(prometheus: str, alertname: str) -> list[dict[str, Any]]:
    """The firing (not pending) alerts of that name in a Prometheus at `prometheus` (host:port)."""
    alerts = json.loads(http(f"http://{prometheus}/api/v1/alerts"))["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]
