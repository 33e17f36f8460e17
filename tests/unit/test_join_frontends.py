"""The same behaviour through both tap front ends (the vLLM middleware and the proxy): what the client gets is
exactly what vLLM would have sent it, and each request is folded into the same spec_tap_* series."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import CollectorRegistry

from spec_exporter.tap import sse as sse_module
from spec_exporter.tap.asgi import SpecDecodeMiddleware
from spec_exporter.tap.metrics import TapMetrics
from spec_exporter.tap.proxy import create_tap_app, tap_runner
from spec_exporter.tap.settings import TapSettings
from tests.asgi_vllm import VLLMApp, call
from tests.conftest import FakeClock
from tests.openai_standin import OpenAIStandIn
from tests.unit.test_join import counts
from tests.vllm_answers import CHAT_JSON, COMPLETION_JSON, VLLMStandIn, direct, usage_chunk

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24}
COMPLETION = {"model": "tiny", "prompt": "hi", "max_tokens": 32}
C, P = "/v1/chat/completions", "/v1/completions"


class FrontEnd(Protocol):
    registry: CollectorRegistry
    standin: VLLMStandIn

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]: ...


@dataclass
class Middleware:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    standin: VLLMStandIn = field(default_factory=VLLMStandIn)

    def __post_init__(self) -> None:
        self.mw = SpecDecodeMiddleware(
            VLLMApp(self.standin), metrics=TapMetrics(self.registry), settings=TapSettings(), clock=FakeClock()
        )

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        got = await call(self.mw, path, body)
        return got.status, got.body


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = tap_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Proxy:
    registry: CollectorRegistry
    standin: VLLMStandIn
    url: str
    client: aiohttp.ClientSession

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with self.client.post(self.url + path, data=body, headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.read()


@asynccontextmanager
async def proxy() -> AsyncIterator[Proxy]:
    upstream = OpenAIStandIn()
    registry = CollectorRegistry()
    up_runner, up_url = await serve(upstream.app())
    tap = create_tap_app(up_url, TapMetrics(registry), TapSettings(), clock=FakeClock())
    tap_runner_, tap_url = await serve(tap)
    try:
        # A client that accepts identity only, so the proxy may inject (see test_proxy_tap for the others).
        async with aiohttp.ClientSession(
            auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type")
        ) as client:
            yield Proxy(registry, upstream.vllm, tap_url, client)
    finally:
        await tap_runner_.cleanup()
        await up_runner.cleanup()


FRONT_ENDS = ["middleware", "proxy"]


@pytest_asyncio.fixture(params=FRONT_ENDS)
async def front(request: pytest.FixtureRequest) -> AsyncIterator[FrontEnd]:
    if request.param == "middleware":
        yield Middleware()
        return
    async with proxy() as p:
        yield p


def j(body: Any) -> bytes:
    return json.dumps(body).encode()


# (path, body, the (model, outcome, band) it is folded as)
CASES: dict[str, tuple[str, bytes, tuple[str, str, str]]] = {
    "stream-no-usage": (C, j({**CHAT, "stream": True, "temperature": 0.4}), ("tiny", "measured", "0.3-0.5")),
    "stream-usage": (
        C,
        j({**CHAT, "stream": True, "temperature": 0.4, "stream_options": {"include_usage": True}}),
        ("tiny", "measured", "0.3-0.5"),
    ),
    "stream-usage-lax-string": (
        C,
        j({**CHAT, "stream": "true", "temperature": "0.4", "stream_options": {"include_usage": "true"}}),
        ("tiny", "measured", "0.3-0.5"),
    ),
    "stream-usage-lax-int": (
        C,
        j({**CHAT, "stream": 1, "stream_options": {"include_usage": 1}}),
        ("tiny", "measured", "1.0+"),
    ),
    "stream-continuous-alone": (
        C,
        j({**CHAT, "stream": True, "stream_options": {"continuous_usage_stats": True}}),
        ("tiny", "not_measurable", "1.0+"),
    ),
    "stream-continuous-with-usage": (
        C,
        j({**CHAT, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}),
        ("tiny", "measured", "1.0+"),
    ),
    "stream-usage-false": (
        C,
        j({**CHAT, "stream": True, "temperature": 0, "stream_options": {"include_usage": False}}),
        ("tiny", "measured", "0"),
    ),
    "stream-n2": (C, j({**CHAT, "stream": True, "n": 2}), ("tiny", "not_measurable", "1.0+")),
    "chat": (C, j({**CHAT, "temperature": 0.7}), ("tiny", "measured", "0.7-1.0")),
    "completion": (P, j({**COMPLETION, "temperature": 1.0}), ("tiny", "measured", "1.0+")),
    "completion-default-temperature": (P, j(COMPLETION), ("tiny", "measured", "1.0+")),
    "completion-n2": (P, j({**COMPLETION, "n": 2}), ("tiny", "not_measurable", "1.0+")),
    "not-json": (C, b'{"model": "tiny", "stream": tru', ("unknown", "not_understood", "unknown")),
    "json-array": (C, b"[1, 2]", ("unknown", "not_understood", "unknown")),
    "temperature-not-a-number": (C, j({**CHAT, "temperature": "hot"}), ("tiny", "upstream_error", "invalid")),
    "temperature-out-of-range": (C, j({**CHAT, "temperature": 5}), ("tiny", "upstream_error", "invalid")),
    "stream-options-without-stream": (
        C,
        j({**CHAT, "stream_options": {"include_usage": True}}),
        ("tiny", "upstream_error", "1.0+"),
    ),
    # vLLM's validation error echoes the body's size: the injected member must not show in it.
    "validation-error-echo": (C, j({"model": "tiny", "stream": True}), ("tiny", "upstream_error", "1.0+")),
    # Merged into the client's own stream_options: the body keeps its number of members, nothing to take out.
    "validation-error-echo-with-own-stream-options": (
        C,
        j({"model": "tiny", "stream": True, "stream_options": {}}),
        ("tiny", "upstream_error", "1.0+"),
    ),
    "validation-error-echo-of-a-bigger-body": (
        C,
        j({"model": "tiny", "stream": True, "temperature": 0.4, "max_tokens": 3, "top_p": 0.5}),
        ("tiny", "upstream_error", "0.3-0.5"),
    ),
    # vLLM finds stop strings after its engine is done with the request: no per-request numbers, flag or not.
    "stop-string": (C, j({**CHAT, "stop": "og"}), ("tiny", "unreported", "1.0+")),
    "stop-string-stream": (C, j({**CHAT, "stream": True, "stop": ["og"]}), ("tiny", "unreported", "1.0+")),
    "stop-string-stream-usage": (
        P,
        j({**COMPLETION, "stream": True, "stop": "og", "stream_options": {"include_usage": True}}),
        ("tiny", "unreported", "1.0+"),
    ),
    # Several prompts in one completion: vLLM reports no per-request metrics, and nothing is injected.
    "several-prompts": (P, j({**COMPLETION, "prompt": ["a", "b"]}), ("tiny", "unreported", "1.0+")),
    "several-prompts-stream": (
        P,
        j({**COMPLETION, "prompt": ["a", "b"], "stream": True}),
        ("tiny", "unreported", "1.0+"),
    ),
    "several-prompts-stream-usage": (
        P,
        j({**COMPLETION, "prompt": ["a", "b", "c"], "stream": True, "stream_options": {"include_usage": True}}),
        ("tiny", "unreported", "1.0+"),
    ),
    "one-prompt-of-token-ids": (P, j({**COMPLETION, "prompt": [1, 2, 3]}), ("tiny", "measured", "1.0+")),
    # json.loads (vLLM's reader) takes UTF-16 and a UTF-8 BOM; nothing is injected into a body not in UTF-8.
    "utf16-stream": (C, json.dumps({**CHAT, "stream": True}).encode("utf-16"), ("tiny", "not_measurable", "1.0+")),
    "utf16-json": (C, json.dumps({**CHAT, "temperature": 0.2}).encode("utf-16"), ("tiny", "measured", "0-0.3")),
    "utf8-bom-stream": (C, b"\xef\xbb\xbf" + j({**CHAT, "stream": True}), ("tiny", "measured", "1.0+")),
    "model-with-lone-surrogate": (
        C,
        j({**CHAT, "model": "bad-\ud800", "stream": True, "n": 2}),
        ("invalid", "not_measurable", "1.0+"),
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_the_client_gets_exactly_what_vllm_would_have_sent(front: FrontEnd, case: str) -> None:
    path, body, _ = CASES[case]
    status, received = await front.post(path, body)
    plain = VLLMStandIn().answer(path, body)
    assert status == plain.status
    assert received == b"".join(plain.chunks)


@pytest.mark.parametrize("case", CASES)
async def test_each_request_is_folded_once_by_model_outcome_and_band(front: FrontEnd, case: str) -> None:
    path, body, folded = CASES[case]
    await front.post(path, body)
    assert counts(front.registry) == {folded: 1}


async def test_usage_is_asked_for_on_the_clients_behalf_and_withheld(front: FrontEnd) -> None:
    body = j({**CHAT, "stream": True, "temperature": 0.4})
    _, received = await front.post(C, body)
    (upstream,) = front.standin.received
    assert json.loads(upstream)["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in received and received.endswith(b"data: [DONE]\n\n")
    spec = usage_chunk()["metrics"]["speculative_decoding"]
    labels = ("tiny", "0.3-0.5")
    assert counts(front.registry, "spec_tap_accepted_tokens_total") == {labels: spec["num_accepted_draft_tokens"]}
    assert counts(front.registry, "spec_tap_draft_tokens_total") == {labels: spec["num_draft_tokens"]}


async def test_per_band_sums_are_the_sums_of_vllms_per_request_numbers(front: FrontEnd) -> None:
    stream = usage_chunk()["metrics"]["speculative_decoding"]
    chat = json.loads(CHAT_JSON)["metrics"]["speculative_decoding"]
    completion = json.loads(COMPLETION_JSON)["metrics"]["speculative_decoding"]
    for t in (0.35, 0.45, 0.4):
        await front.post(C, j({**CHAT, "stream": True, "temperature": t}))
    for t in (0.7, 0.99):
        await front.post(C, j({**CHAT, "temperature": t}))
    await front.post(P, j({**COMPLETION, "temperature": 0.8}))
    accepted = counts(front.registry, "spec_tap_accepted_tokens_total")
    drafted = counts(front.registry, "spec_tap_draft_tokens_total")
    assert accepted == {
        ("tiny", "0.3-0.5"): 3 * stream["num_accepted_draft_tokens"],
        ("tiny", "0.7-1.0"): 2 * chat["num_accepted_draft_tokens"] + completion["num_accepted_draft_tokens"],
    }
    assert drafted == {
        ("tiny", "0.3-0.5"): 3 * stream["num_draft_tokens"],
        ("tiny", "0.7-1.0"): 2 * chat["num_draft_tokens"] + completion["num_draft_tokens"],
    }
    assert counts(front.registry, "spec_tap_request_acceptance_rate_count") == {
        ("tiny", "0.3-0.5"): 3,
        ("tiny", "0.7-1.0"): 3,
    }


async def test_a_failure_inside_the_core_passes_what_vllm_sent(
    front: FrontEnd, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(sse_module.UsageFilter, "feed", boom)
    status, received = await front.post(C, j({**CHAT, "stream": True}))
    (upstream,) = front.standin.received
    assert status == 200 and received == direct(C, upstream)
    assert counts(front.registry, "spec_tap_errors_total") == {("internal",): 1}
    assert counts(front.registry) == {("tiny", "not_measurable", "1.0+"): 1}


async def test_upstream_errors_pass_through_and_are_counted(front: FrontEnd) -> None:
    front.standin.status = 503
    status, received = await front.post(C, j({**CHAT, "temperature": 0.2}))
    assert status == 503 and b"scripted failure" in received
    assert counts(front.registry) == {("tiny", "upstream_error", "0-0.3"): 1}
