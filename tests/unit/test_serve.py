"""The whole process in one loop: exporter and tap served together, the tap's numbers on the exporter's
/metrics, and the remedy on /readyz."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from harness.ports import free_port
from spec_exporter.app import serve
from tests.conftest import make_settings
from tests.openai_standin import OpenAIStandIn
from tests.standin import V032_LOAD, Reply, sample


async def wait_for(check: Any, timeout: float = 10.0) -> None:
    """Wait on a condition, bounded; not on the passing of time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def fetch(client: aiohttp.ClientSession, url: str) -> tuple[int, str] | None:
    """(status, body); None while nothing listens there yet."""
    try:
        async with client.get(url) as r:
            return r.status, await r.text()
    except aiohttp.ClientConnectionError:
        return None


@contextlib.asynccontextmanager
async def exporter_and_tap(aiohttp_server: Any, metrics_url: str) -> AsyncIterator[tuple[str, str, OpenAIStandIn]]:
    """serve() with the proxy tap, polling every 500ms (windows of two polls): (exporter URL, tap URL, the OpenAI
    API behind the tap). One vLLM: /metrics from the metrics stand-in, the OpenAI API from the other."""
    upstream = OpenAIStandIn()
    api = await aiohttp_server(upstream.app())
    settings = make_settings(
        metrics_url,
        tap={"upstream_url": str(api.make_url(""))},
        poll={"interval": "500ms", "timeout": "400ms"},
        windows=["1s", "5s"],
    )
    exporter_port, tap_port = free_port(), free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(settings, listen=f"127.0.0.1:{exporter_port}", tap_listen=f"127.0.0.1:{tap_port}", stop=stop)
    )
    try:
        yield f"http://127.0.0.1:{exporter_port}", f"http://127.0.0.1:{tap_port}", upstream
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_exporter_and_tap_serve_together(aiohttp_server: Any, standin: Any) -> None:
    metrics_server, metrics_url = standin
    metrics_server.push(sample(V032_LOAD))
    # The tap's numbers reach /metrics at the next poll after a request.
    async with (
        exporter_and_tap(aiohttp_server, metrics_url) as (exporter, tap, upstream),
        aiohttp.ClientSession() as client,
    ):

        async def ready() -> bool:
            got = await fetch(client, f"{exporter}/readyz")
            return got is not None and got[0] == 200

        await wait_for(ready)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7}
        async with client.post(f"{tap}/v1/chat/completions", json=body) as r:
            assert r.status == 200 and await r.read() == upstream.chat_json
        drafted = json.loads(upstream.chat_json)["metrics"]["speculative_decoding"]["num_draft_tokens"]
        band_line = (
            "spec_decode_request_draft_tokens_total"
            '{model_name="tiny",target="vllm",temperature_band="0.7-1.0",workload="default"} '
            f"{float(drafted)!r}"
        )

        async def metrics_text() -> str:
            async with client.get(f"{exporter}/metrics") as r:
                return await r.text()

        async def polled_since() -> bool:
            return band_line in await metrics_text()

        await wait_for(polled_since)
        text = await metrics_text()
        assert 'spec_decode_tap_requests_total{outcome="measured",target="vllm",temperature_band="0.7-1.0"} 1.0' in text

        # vLLM without --per-request-spec-decode-metrics: say so where an operator looks first.
        doc = json.loads(upstream.chat_json)
        doc["metrics"] = None
        upstream.chat_json = json.dumps(doc).encode()
        async with client.post(f"{tap}/v1/chat/completions", json=body) as r:
            assert r.status == 200

        async def remedy_shown() -> bool:
            async with client.get(f"{exporter}/readyz") as r:
                return r.status == 200 and "--per-request-spec-decode-metrics summary" in await r.text()

        await wait_for(remedy_shown)
        assert 'spec_decode_tap_per_request_metrics_missing{target="vllm"} 1.0' in await metrics_text()


@pytest.mark.parametrize(
    "broken",
    [
        Reply("<html><body><form>Sign in</form></body></html>\n", content_type="text/html"),
        Reply(""),
    ],
    ids=["login-page", "empty"],
)
async def test_a_vllm_whose_metrics_are_not_metrics_is_down_whatever_the_proxy_tap_holds(
    aiohttp_server: Any, standin: Any, broken: Reply
) -> None:
    metrics_server, metrics_url = standin
    metrics_server.push(broken)
    async with (
        exporter_and_tap(aiohttp_server, metrics_url) as (exporter, tap, _),
        aiohttp.ClientSession() as client,
    ):

        async def metrics_text() -> str:
            got = await fetch(client, f"{exporter}/metrics")
            return got[1] if got is not None else ""

        async def listening() -> bool:
            return bool(await metrics_text())

        await wait_for(listening)
        # The tap holds a measured request, so its own families are full.
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7}
        async with client.post(f"{tap}/v1/chat/completions", json=body) as r:
            assert r.status == 200
        polls_before = metrics_server.served

        async def polled_after_the_request() -> bool:
            return (
                metrics_server.served >= polls_before + 2 and "spec_decode_exporter_target_up" in await metrics_text()
            )

        await wait_for(polled_after_the_request)
        text = await metrics_text()
        assert 'spec_decode_exporter_target_up{target="vllm"} 0.0' in text
        assert 'spec_decode_exporter_poll_errors_total{reason="unknown_layout",target="vllm"}' in text
        assert "spec_decode_tap_requests_total" not in text
