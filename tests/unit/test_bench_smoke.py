"""The scrapes benchmark's exporter process, in both of its modes, is the exporter with the tap as users run it.

bench/bench_scrapes.py reports stream latency through `bench.tap_upstream serve`; if that role stopped
relaying, or its --no-cache reference stopped serving the exporter's own families, the benchmark would compare
something else. One stream and a few scrapes each way, no timing.
"""

from __future__ import annotations

import aiohttp
import pytest

from bench.bench_resources import PROMETHEUS_ACCEPT
from bench.bench_scrapes import scrape_once as checked_scrape
from bench.bench_scrapes import start_exporter
from bench.bench_tap import Load, start_server, stream_once


@pytest.mark.parametrize("mode", ["cache", "stock"])
async def test_serve_role_relays_streams_and_serves_the_exporters_metrics(mode: str) -> None:
    upstream = await start_server("upstream", "upstream", "--interval-ms", "0")
    exporter = None
    try:
        exporter = await start_exporter(mode, upstream, "/metrics")
        async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding",)) as session:
            load = Load((0, 1 << 62))
            await stream_once(session, exporter.tap_url, 8, load, {"Content-Type": "application/json"})
            assert load.streams_done == 1 and load.bad_count == 0, load.bad
            headers = {"Accept": PROMETHEUS_ACCEPT}
            for want_gzip in (False, True):
                h = headers | {"Accept-Encoding": "gzip" if want_gzip else "identity"}
                assert await checked_scrape(session, exporter.metrics_url, h, want_gzip) == ""
            # The check is not a rubber stamp: the upstream's vLLM text is no exporter exposition.
            problem = await checked_scrape(session, upstream.url + "/metrics", headers, False)
            assert problem.startswith("not a whole OpenMetrics exposition")
            assert await checked_scrape(session, upstream.url + "/metrics", headers, False, of_vllm=True) == ""
    finally:
        if exporter is not None:
            await exporter.server.stop()
        await upstream.stop()
