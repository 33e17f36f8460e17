"""The whole process in one loop: exporter and tap served together, the tap's numbers on the exporter's
/metrics, and the remedy on /readyz."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from harness.ports import free_port
from spec_exporter.app import serve
from tests.conftest import make_settings
from tests.openai_standin import OpenAIStandIn
from tests.standin import V032_LOAD, sample


async def wait_for(check: Any, timeout: float = 10.0) -> None:
    """Wait on a condition, bounded; not on the passing of time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_exporter_and_tap_serve_together(aiohttp_server: Any, standin: Any) -> None:
    metrics_server, metrics_url = standin
    metrics_server.push(sample(V032_LOAD))
    upstream = OpenAIStandIn()
    # One vLLM: /metrics from the metrics stand-in, the OpenAI API from the other, behind one URL.
    api = await aiohttp_server(upstream.app())
    # Windows of two 1s polls: the tap's numbers reach /metrics at the next poll after a request.
    settings = make_settings(
        metrics_url,
        tap={"upstream_url": str(api.make_url(""))},
        poll={"interval": "500ms", "timeout": "400ms"},
        windows=["1s", "5s"],
    )
    exporter_port, tap_port = free_port(), free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(
            settings,
            listen=f"127.0.0.1:{exporter_port}",
            tap_listen=f"127.0.0.1:{tap_port}",
            stop=stop,
        )
    )
    async with aiohttp.ClientSession() as client:

        async def ready() -> bool:
            try:
                async with client.get(f"http://127.0.0.1:{exporter_port}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(ready)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7}
        async with client.post(f"http://127.0.0.1:{tap_port}/v1/chat/completions", json=body) as r:
            assert r.status == 200 and await r.read() == upstream.chat_json
        drafted = json.loads(upstream.chat_json)["metrics"]["speculative_decoding"]["num_draft_tokens"]
        band_line = (
            'spec_decode_request_draft_tokens_total{model_name="tiny",target="vllm",temperature_band="0.7-1.0"} '
            f"{float(drafted)!r}"
        )

        async def metrics_text() -> str:
            async with client.get(f"http://127.0.0.1:{exporter_port}/metrics") as r:
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
        async with client.post(f"http://127.0.0.1:{tap_port}/v1/chat/completions", json=body) as r:
            assert r.status == 200

        async def remedy_shown() -> bool:
            async with client.get(f"http://127.0.0.1:{exporter_port}/readyz") as r:
                return r.status == 200 and "--per-request-spec-decode-metrics summary" in await r.text()

        await wait_for(remedy_shown)
        assert 'spec_decode_tap_per_request_metrics_missing{target="vllm"} 1.0' in await metrics_text()
    stop.set()
    await asyncio.wait_for(task, timeout=10)
