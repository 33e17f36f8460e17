"""The HTTP face of the exporter: /metrics, /healthz, /readyz and the landing page."""

from __future__ import annotations

from typing import Any

from spec_exporter.app import POLLER_KEY, create_app
from tests.conftest import make_settings
from tests.standin import V032_LOAD, sample


async def test_endpoints_before_and_after_the_first_successful_poll(standin: Any, aiohttp_client: Any) -> None:
    server, url = standin
    server.push(sample(V032_LOAD))
    app = create_app(make_settings(url), run_poller=False)
    client = await aiohttp_client(app)

    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "'vllm' has not been polled successfully yet" in await ready.text()
    assert (await client.get("/healthz")).status == 200

    await app[POLLER_KEY].poll_once()
    ready = await client.get("/readyz")
    assert ready.status == 200 and await ready.text() == "ready\n"

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
    client = await aiohttp_client(create_app(make_settings(url)))
    # The first poll runs at startup; wait for it by condition, with a bound.
    for _ in range(200):
        if (await client.get("/readyz")).status == 200:
            break
        await __import__("asyncio").sleep(0.01)
    assert polled == ["/metrics"]
    await client.close()
