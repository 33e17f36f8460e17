"""The tap against a stand-in vLLM replaying real captured responses: transparency, fail-open, and the
per-band numbers it records."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from spec_exporter.tap.bands import Bands
from spec_exporter.tap.proxy import create_tap_app
from spec_exporter.tap.recorder import ErrorStage, Outcome, TapRecorder
from spec_exporter.types import Thresholds, Verdict, Window
from tests.conftest import FakeClock
from tests.openai_standin import OpenAIStandIn, usage_chunk, without_usage_chunk

WINDOWS = (Window("1m", 60.0), Window("5m", 300.0))
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 32}


@dataclass
class Tap:
    upstream: OpenAIStandIn
    recorder: TapRecorder
    url: str
    client: aiohttp.ClientSession

    async def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, bytes, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.client.post(self.url + path, data=data, **kwargs) as r:
            return r.status, await r.read(), r.headers

    def series(self, band: str, model: str = "tiny"):  # type: ignore[no-untyped-def]
        return next(s for s in self.recorder.snapshot().series if s.band == band and s.model == model)

    def requests(self) -> dict[tuple[str, Outcome], int]:
        return dict(self.recorder.snapshot().requests)


@pytest_asyncio.fixture
async def tap(aiohttp_server: Any) -> AsyncIterator[Tap]:
    upstream = OpenAIStandIn()
    up = await aiohttp_server(upstream.app())
    clock = FakeClock()
    recorder = TapRecorder("vllm", Bands(), WINDOWS, Thresholds(min_draft_tokens=10), verdict_window="5m", clock=clock)
    app = create_tap_app(str(up.make_url("")), recorder, clock=clock)
    server = await aiohttp_server(app)  # aiohttp's test server already cancels handlers on disconnect
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        yield Tap(upstream, recorder, str(server.make_url("")).rstrip("/"), client)


async def test_non_streamed_response_passes_byte_for_byte_and_is_measured(tap: Tap) -> None:
    status, body, headers = await tap.post("/v1/chat/completions", {**CHAT, "temperature": 0.7})
    assert status == 200 and body == tap.upstream.chat_json
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(body))
    s = tap.series("0.7-1.0")
    assert (s.accepted, s.drafted) == (7, 75)
    # 7/75 = 0.093 lands in the first bucket (le 0.1); cumulative from there on.
    assert s.acceptance.counts[0] == 1 and s.acceptance.count == 1 and s.acceptance.sum == 7 / 75
    assert s.ttft.sum == pytest.approx((29.762512999923274 + 0.03910800000994641) / 1000)
    assert s.tpot.sum == pytest.approx(9.271997322582225 / 1000)
    assert tap.requests() == {("0.7-1.0", Outcome.MEASURED): 1}
    # Untouched upstream: the tap forwarded the client's bytes as they were.
    assert tap.upstream.bodies[0] == json.dumps({**CHAT, "temperature": 0.7}).encode()


async def test_stream_without_usage_gets_it_added_upstream_and_removed_for_the_client(tap: Tap) -> None:
    body = {**CHAT, "temperature": 0.4, "stream": True}
    status, received, headers = await tap.post("/v1/chat/completions", body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert received == without_usage_chunk(tap.upstream.stream_usage)
    assert received.endswith(b"data: [DONE]\n\n")
    assert tap.upstream.requests[0]["body"]["stream_options"] == {"include_usage": True}
    s = tap.series("0.3-0.5")
    spec = usage_chunk(tap.upstream.stream_usage)["metrics"]["speculative_decoding"]
    assert (s.accepted, s.drafted) == (spec["num_accepted_draft_tokens"], spec["num_draft_tokens"]) == (7, 48)
    assert tap.requests() == {("0.3-0.5", Outcome.MEASURED): 1}


async def test_stream_whose_client_asked_for_usage_is_relayed_untouched(tap: Tap) -> None:
    body = {**CHAT, "temperature": 0.4, "stream": True, "stream_options": {"include_usage": True}}
    status, received, _ = await tap.post("/v1/chat/completions", body)
    assert status == 200 and received == tap.upstream.stream_usage
    assert tap.upstream.bodies[0] == json.dumps(body).encode()
    assert tap.series("0.3-0.5").drafted == 48


async def test_with_injection_off_the_stream_is_untouched_and_unmeasured(aiohttp_server: Any) -> None:
    upstream = OpenAIStandIn()
    up = await aiohttp_server(upstream.app())
    clock = FakeClock()
    recorder = TapRecorder("vllm", Bands(), WINDOWS, Thresholds(), verdict_window="5m", clock=clock)
    server = await aiohttp_server(create_tap_app(str(up.make_url("")), recorder, inject_usage=False, clock=clock))
    async with aiohttp.ClientSession() as client:
        body = json.dumps({**CHAT, "stream": True}).encode()
        async with client.post(server.make_url("/v1/chat/completions"), data=body) as r:
            assert await r.read() == upstream.stream_no_usage
    assert upstream.bodies[0] == body
    assert recorder.snapshot().requests == {("1.0+", Outcome.NO_SPEC_METRICS): 1}


async def test_n_greater_than_one_is_counted_without_spec_metrics_and_no_remedy(tap: Tap) -> None:
    with capture_logs() as logs:
        status, body, _ = await tap.post("/v1/completions", {"model": "tiny", "prompt": "hi", "n": 2})
    assert status == 200 and body == tap.upstream.n2_json
    assert tap.requests() == {("1.0+", Outcome.NO_SPEC_METRICS): 1}
    assert not tap.recorder.missing_spec_metrics and logs == []


async def test_missing_per_request_metrics_logs_the_remedy_once(tap: Tap) -> None:
    doc = json.loads(tap.upstream.completion_json)
    doc["metrics"] = None  # vLLM without --per-request-spec-decode-metrics
    tap.upstream.completion_json = json.dumps(doc).encode()
    with capture_logs() as logs:
        for _ in range(3):
            await tap.post("/v1/completions", {"model": "tiny", "prompt": "hi", "temperature": 0})
    assert tap.recorder.missing_spec_metrics
    assert [e["event"] for e in logs] == ["vLLM returns no per-request speculative-decoding metrics"]
    assert "--per-request-spec-decode-metrics summary" in logs[0]["remedy"]
    assert tap.requests() == {("0", Outcome.NO_SPEC_METRICS): 3}


@pytest.mark.parametrize(
    ("raw", "band", "outcome"),
    [
        (b'"0.7"', "0.7-1.0", Outcome.MEASURED),  # vLLM's lax pydantic reads the string as 0.7
        (b"true", "1.0+", Outcome.MEASURED),
        (b"-1", "invalid", Outcome.UPSTREAM_ERROR),
        (b"NaN", "invalid", Outcome.UPSTREAM_ERROR),
        (b"Infinity", "invalid", Outcome.UPSTREAM_ERROR),
        (b"1e9", "invalid", Outcome.UPSTREAM_ERROR),
        (b'"warm"', "invalid", Outcome.UPSTREAM_ERROR),
        (b"null", "1.0+", Outcome.MEASURED),  # the configured default, 1.0
        (None, "1.0+", Outcome.MEASURED),
        (b"0", "0", Outcome.MEASURED),
        (b"0.005", "0-0.3", Outcome.MEASURED),
        (b"2", "1.0+", Outcome.MEASURED),
    ],
)
async def test_temperatures_land_in_the_band_vllm_would_sample_at(
    tap: Tap, raw: bytes | None, band: str, outcome: Outcome
) -> None:
    field = b"" if raw is None else b', "temperature": ' + raw
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]' + field + b"}"
    status, _, _ = await tap.post("/v1/chat/completions", body)
    assert status == (200 if outcome is Outcome.MEASURED else 400)
    assert tap.requests() == {(band, outcome): 1}
    assert tap.upstream.bodies == [body]


async def test_a_body_that_is_not_json_passes_through_untouched(tap: Tap) -> None:
    with capture_logs() as logs:
        status, body, _ = await tap.post("/v1/chat/completions", b"temperature=0.7&not json")
    assert status == 400 and json.loads(body)["error"]["message"] == "invalid JSON body"
    assert tap.upstream.bodies == [b"temperature=0.7&not json"]
    snap = tap.recorder.snapshot()
    assert snap.errors[ErrorStage.REQUEST] == 1
    assert snap.requests == {("unknown", Outcome.NOT_UNDERSTOOD): 1}
    assert [e["event"] for e in logs] == ["tap request not understood"]


@pytest.mark.parametrize("status", [400, 404, 500, 503])
async def test_upstream_errors_pass_through(tap: Tap, status: int) -> None:
    tap.upstream.status = status
    got, body, _ = await tap.post("/v1/chat/completions", {**CHAT, "temperature": 0.2})
    assert got == status and json.loads(body)["error"]["code"] == status
    assert tap.requests() == {("0-0.3", Outcome.UPSTREAM_ERROR): 1}


async def test_an_unreachable_upstream_is_a_502_and_counted(aiohttp_server: Any) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = FakeClock()
    recorder = TapRecorder("vllm", Bands(), WINDOWS, Thresholds(), verdict_window="5m", clock=clock)
    server = await aiohttp_server(create_tap_app(f"http://127.0.0.1:{port}", recorder, clock=clock))
    async with aiohttp.ClientSession() as client:
        async with client.post(server.make_url("/v1/completions"), json={"prompt": "x", "temperature": 0}) as r:
            assert r.status == 502 and (await r.json())["code"] == 502
    assert recorder.snapshot().requests == {("0", Outcome.UPSTREAM_ERROR): 1}


async def test_other_paths_and_headers_pass_through(tap: Tap) -> None:
    async with tap.client.get(
        tap.url + "/v1/models", headers={"Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-Custom": "kept"}
    ) as r:
        assert r.status == 200 and r.headers["X-Upstream"] == "vllm"
        assert (await r.json())["data"][0]["id"] == "tiny"
    async with tap.client.put(
        tap.url + "/echo?a=1&b=%20", data=b"payload", headers={"X-Custom": "kept", "X-Hop": "1", "Connection": "X-Hop"}
    ) as r:
        echo = await r.json()
    assert echo["method"] == "PUT" and echo["raw_path"] == "/echo?a=1&b=%20" and echo["bytes"] == 7
    assert echo["headers"]["X-Custom"] == "kept" and "X-Hop" not in echo["headers"]
    assert tap.recorder.snapshot().requests == {}


async def test_twenty_megabyte_bodies_go_through_intact(tap: Tap) -> None:
    import hashlib

    blob = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    async with tap.client.post(tap.url + "/echo", data=blob) as r:
        echo = await r.json()
    assert echo["bytes"] == len(blob) and echo["sha256"] == hashlib.sha256(blob).hexdigest()
    # Over the inspection cap on an inference path: forwarded as it is, counted as not inspected.
    big = json.dumps({**CHAT, "temperature": 0.7, "messages": [{"role": "user", "content": "x" * 20_000_000}]})
    status, body, _ = await tap.post("/v1/chat/completions", big.encode())
    assert status == 200 and body == tap.upstream.chat_json
    assert tap.upstream.bodies[-1] == big.encode()
    assert tap.recorder.snapshot().errors[ErrorStage.REQUEST] == 1


async def test_client_disconnect_mid_stream_closes_the_upstream_connection(tap: Tap) -> None:
    tap.upstream.hang_after_events = 3
    body = json.dumps({**CHAT, "temperature": 0.4, "stream": True}).encode()
    response = await tap.client.post(tap.url + "/v1/chat/completions", data=body)
    first = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"data: ")
    response.close()  # the client goes away while vLLM is still generating
    await asyncio.wait_for(tap.upstream.disconnected.wait(), timeout=10)
    for _ in range(200):
        if tap.requests():
            break
        await asyncio.sleep(0.01)
    assert tap.requests() == {("0.3-0.5", Outcome.CLIENT_DISCONNECTED): 1}


async def test_upstream_reset_mid_stream_reaches_the_client_as_a_broken_stream(tap: Tap) -> None:
    tap.upstream.reset_after_events = 3
    body = json.dumps({**CHAT, "temperature": 0.4, "stream": True}).encode()
    with pytest.raises(aiohttp.ClientPayloadError):
        await tap.post("/v1/chat/completions", body)
    assert tap.requests() == {("0.3-0.5", Outcome.UPSTREAM_ERROR): 1}


async def test_two_hundred_concurrent_streams_are_each_byte_exact(tap: Tap) -> None:
    tap.upstream.event_delay = 0.001
    expected = without_usage_chunk(tap.upstream.stream_usage)
    body = {**CHAT, "temperature": 0.4, "stream": True}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one() -> bytes:
            async with client.post(tap.url + "/v1/chat/completions", json=body) as r:
                return await r.read()

        results = await asyncio.gather(*(one() for _ in range(200)))
    assert all(r == expected for r in results)
    s = tap.series("0.3-0.5")
    assert (s.accepted, s.drafted, s.acceptance.count) == (7 * 200, 48 * 200, 200)


async def test_band_numbers_windows_and_verdicts(tap: Tap) -> None:
    for _ in range(3):
        await tap.post("/v1/chat/completions", {**CHAT, "temperature": 0.7})  # 7/75 each
    await tap.post("/v1/chat/completions", {**CHAT, "temperature": 0.4, "stream": True})  # 7/48
    snap = tap.recorder.snapshot()
    high = next(s for s in snap.series if s.band == "0.7-1.0")
    one_minute = high.windows[0]
    assert (one_minute.requests, one_minute.accepted, one_minute.drafted) == (3, 21, 225)
    assert one_minute.percentiles == {0.1: 7 / 75, 0.5: 7 / 75, 0.9: 7 / 75}
    assert high.verdict is Verdict.DISABLE
    assert snap.drafted_in_window == {"1m": 225 + 48, "5m": 225 + 48}


async def test_nothing_of_prompts_completions_or_credentials_reaches_the_logs(tap: Tap) -> None:
    secret_prompt, secret_key = "PROMPT-7f3a-do-not-log", "Bearer sk-SECRET-9c1d"
    headers = {"Authorization": secret_key}
    messages = [{"role": "user", "content": secret_prompt}]
    with capture_logs() as logs:
        await tap.post(
            "/v1/chat/completions", {"model": "tiny", "messages": messages, "temperature": 0.7}, headers=headers
        )
        await tap.post("/v1/chat/completions", f"not json {secret_prompt}".encode(), headers=headers)
        tap.upstream.status = 500
        await tap.post("/v1/chat/completions", {"model": "tiny", "messages": messages, "stream": True}, headers=headers)
        doc = json.loads(tap.upstream.completion_json)
        doc["metrics"] = None
        tap.upstream.status, tap.upstream.completion_json = None, json.dumps(doc).encode()
        await tap.post("/v1/completions", {"model": "tiny", "prompt": secret_prompt}, headers=headers)
    assert len(logs) >= 2
    completion_text = json.loads(tap.upstream.chat_json)["choices"][0]["message"]["content"]
    dumped = json.dumps(logs, default=str)
    for secret in (secret_prompt, "sk-SECRET", completion_text, "Authorization"):
        assert secret not in dumped
    assert tap.upstream.requests[0]["headers"]["Authorization"] == secret_key  # forwarded, just never logged


def test_percentiles_interpolate_like_numpy() -> None:
    from spec_exporter.derive.sample import percentiles

    assert percentiles([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx({0.1: 0.14, 0.5: 0.3, 0.9: 0.46})
    assert percentiles([]) == {} and percentiles([0.8]) == {0.1: 0.8, 0.5: 0.8, 0.9: 0.8}
    assert math.isclose(percentiles([0.0, 1.0])[0.9], 0.9)


async def test_the_tap_adds_no_headers_of_its_own(tap: Tap) -> None:
    async with aiohttp.ClientSession(
        skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding")
    ) as bare:
        async with bare.post(tap.url + "/echo", data=b"raw", headers={"X-Only": "this"}) as r:
            sent = (await r.json())["headers"]
    assert {k.lower() for k in sent} == {"host", "x-only", "content-length"}


async def test_keep_alive_connections_are_reused_through_the_tap(tap: Tap) -> None:
    created = 0

    async def on_create(*_: Any) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]) as client:
        for _ in range(3):
            async with client.post(tap.url + "/v1/chat/completions", json={**CHAT, "temperature": 0.7}) as r:
                assert r.status == 200 and await r.read() == tap.upstream.chat_json
    assert created == 1


async def test_model_labels_are_capped(aiohttp_server: Any) -> None:
    upstream = OpenAIStandIn()
    up = await aiohttp_server(upstream.app())
    clock = FakeClock()
    recorder = TapRecorder("vllm", Bands(), WINDOWS, Thresholds(), verdict_window="5m", clock=clock, max_models=2)
    server = await aiohttp_server(create_tap_app(str(up.make_url("")), recorder, clock=clock))
    async with aiohttp.ClientSession() as client:
        for model in ("a", "b", "c", "d", "a"):
            doc = json.loads(OpenAIStandIn().chat_json)
            doc["model"] = model
            upstream.chat_json = json.dumps(doc).encode()
            async with client.post(server.make_url("/v1/chat/completions"), json={**CHAT, "model": model}) as r:
                await r.read()
    models = {s.model: s.drafted for s in recorder.snapshot().series}
    # The first two served names become labels; the rest share "other", so cardinality stays bounded.
    assert models == {"a": 150, "b": 75, "other": 150}


async def test_a_stream_the_tap_cannot_read_is_passed_through_whole(tap: Tap) -> None:
    # A usage chunk that is not JSON: the tap gives up on the stream and forwards every byte, withheld or not.
    broken = tap.upstream.stream_usage.replace(b'"choices":[],"usage":{', b'"choices":[],"usage":{{oops', 1)
    assert broken != tap.upstream.stream_usage
    tap.upstream.stream_usage = broken
    with capture_logs() as logs:
        status, received, _ = await tap.post("/v1/chat/completions", {**CHAT, "temperature": 0.4, "stream": True})
    assert status == 200 and received == broken
    snap = tap.recorder.snapshot()
    assert snap.errors[ErrorStage.RESPONSE] == 1
    assert snap.requests == {("0.3-0.5", Outcome.NO_SPEC_METRICS): 1}
    assert [e["event"] for e in logs] == ["tap stream not understood; passing it through"]
