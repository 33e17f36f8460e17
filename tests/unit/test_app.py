"""The HTTP face of the exporter: /metrics, /healthz, /readyz and the landing page."""

from __future__ import annotations

import asyncio
from typing import Any

from spec_exporter.app import POLLER_KEY, create_app
from spec_exporter.poller import Poller
from tests.conftest import make_settings
from tests.standin import V032_LOAD, sample


async def test_endpoints_before_and_after_the_first_successful_poll(standin: Any, aiohttp_client: Any) -> None:
    server, url = standin
    server.push(sample(V032_LOAD))
    app = create_app(make_settings(url), run_poller=False)
    client = await aiohttp_client(app)

    # Readiness is the exporter's own: a target not polled yet is reported in the body, not by failing the probe.
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.text() == "ready\ntarget 'vllm': not polled successfully yet\n"
    assert (await client.get("/healthz")).status == 200

    await app[POLLER_KEY].poll_once()
    ready = await client.get("/readyz")
    assert ready.status == 200 and await ready.text() == "ready\ntarget 'vllm': up\n"

    metrics = await client.get("/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    body = await metrics.text()
    assert 'spec_decode_exporter_target_up{target="vllm"} 1.0' in body
    assert 'spec_decode_enabled{engine="0",model_name="tiny",target="vllm"} 1.0' in body
    assert "process_resident_memory_bytes" in body
    landing = await client.get("/")
    assert landing.status == 200 and 'href="/metrics"' in await landing.text()


async def test_custom_telemetry_path(standin: Any, aiohttp_client: Any) -> None:
    _, url = standin
    client = await aiohttp_client(create_app(make_settings(url), telemetry_path="/stats", run_poller=False))
    assert (await client.get("/stats")).status == 200
    assert (await client.get("/metrics")).status == 404


async def test_the_poller_task_starts_with_the_app_and_stops_with_it(standin: Any, aiohttp_client: Any) -> None:
    server, url = standin
    server.push(sample(V032_LOAD))
    polled = []
    server.on_request = lambda request: polled.append(request.path)
    stopped = asyncio.Event()

    async def between_polls(_: float) -> None:
        # The interval never passes: one poll only, and the task waits here until the app cancels it.
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.set()
            raise

    def poller(settings: Any, session: Any, store: Any) -> Poller:
        return Poller(settings, session, store, sleep=between_polls)

    client = await aiohttp_client(create_app(make_settings(url), poller_factory=poller))
    # The first poll runs at startup; wait for it by condition, with a bound.
    for _ in range(500):
        if "target 'vllm': up" in await (await client.get("/readyz")).text():
            break
        await asyncio.sleep(0.01)
    assert polled == ["/metrics"] and not stopped.is_set()
    await client.close()
    assert stopped.is_set()


async def test_an_unreachable_baseline_never_fails_the_pods_probes(standin: Any, aiohttp_client: Any) -> None:
    """In sidecar mode /readyz is a serving pod's readiness probe: a remote pool that is down must not matter."""
    server, url = standin
    server.push(sample(V032_LOAD))
    targets = [{"name": "vllm", "url": url}, {"name": "base", "url": "http://127.0.0.1:9", "role": "baseline"}]
    app = create_app(make_settings(url, targets=targets), run_poller=False)
    client = await aiohttp_client(app)
    await app[POLLER_KEY].poll_once()
    ready = await client.get("/readyz")
    assert ready.status == 200
    body = await ready.text()
    assert "target 'vllm': up" in body
    assert "target 'base': not polled successfully yet, last error connection_error" in body
    assert (await client.get("/healthz")).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'spec_decode_exporter_target_up{target="base"} 0.0' in metrics


async def test_concurrent_scrapes_share_one_rendering_per_state() -> None:
    """Fifty scrapers between two polls cost one rendering, not fifty on the loop that relays the tap's streams."""
    import asyncio
    import gzip

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    from spec_exporter.app import ExpositionCache

    collected = []

    class Counting:
        def collect(self):  # type: ignore[no-untyped-def]
            collected.append(1)
            yield GaugeMetricFamily("polls", "how many states", value=len(collected))

    registry = CollectorRegistry()
    registry.register(Counting())  # type: ignore[arg-type]
    state = [object()]
    cache = ExpositionCache(registry, lambda: state[0])  # type: ignore[arg-type,return-value]
    bodies = await asyncio.gather(*(cache.render("") for _ in range(50)))
    assert {b for b, _ in bodies} == {b"# HELP polls how many states\n# TYPE polls gauge\npolls 1.0\n"}
    assert len(collected) == 1
    state[0] = object()  # the poller published a new state
    body, content_type = await cache.render("")
    assert b"polls 2.0" in body and content_type.startswith("text/plain")
    packed, _ = await cache.gzipped("")
    assert gzip.decompress(packed) == body and len(collected) == 2
    om, om_type = await cache.render("application/openmetrics-text; version=1.0.0")
    assert om_type.startswith("application/openmetrics-text") and om.endswith(b"# EOF\n")


async def test_a_gzip_scrape_never_serves_an_older_state_than_a_plain_one() -> None:
    """A poll and a plain scrape that land while a gzip scrape waits for its rendering must not leave gzip a state
    behind for the rest of the poll."""
    import asyncio
    import gzip
    import threading

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    from spec_exporter.app import ExpositionCache

    state = [object(), 1.0]
    first_rendering = threading.Event()
    release_first = threading.Event()
    renders = []

    class Slow:
        def collect(self):  # type: ignore[no-untyped-def]
            value = state[1]
            renders.append(value)
            if len(renders) == 1:  # only the first rendering is slow
                first_rendering.set()
                release_first.wait(5)
            yield GaugeMetricFamily("x", "state", value=value)

    registry = CollectorRegistry()
    registry.register(Slow())  # type: ignore[arg-type]
    cache = ExpositionCache(registry, lambda: state[0])  # type: ignore[arg-type,return-value]
    waiting = asyncio.create_task(cache.gzipped(""))
    await asyncio.to_thread(first_rendering.wait, 5)
    state[0], state[1] = object(), 2.0  # a poll publishes mid-render
    plain, _ = await cache.render("")  # a plain scrape renders the new state meanwhile
    release_first.set()
    old, _ = await waiting
    assert b"x 1.0" in gzip.decompress(old) and b"x 2.0" in plain
    packed, _ = await cache.gzipped("")
    assert gzip.decompress(packed) == plain
