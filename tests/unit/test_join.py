"""The join core on its own: reading requests as vLLM does, the SSE usage filter, and the Exchange's folding and
fail-open. The properties shared with the front ends run against each of them in tests/unit/test_join_frontends.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from spec_exporter.tap import exchange as exchange_module
from spec_exporter.tap import sse as sse_module
from spec_exporter.tap.echo import undo_echo
from spec_exporter.tap.exchange import Exchange
from spec_exporter.tap.metrics import TapMetrics
from spec_exporter.tap.request import identity_only, read_request
from spec_exporter.tap.settings import TapSettings
from spec_exporter.tap.sse import UsageFilter, event_data
from tests.conftest import FakeClock
from tests.unit.test_join_metrics import samples
from tests.vllm_answers import RESPONSES, STREAM_USAGE, VLLMStandIn, direct, stream_events, usage_event

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24}


def view(body: dict[str, Any] | bytes, **kw: Any):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return read_request(
        raw, TapSettings().bands, inject_usage=kw.get("inject", True), may_encode=kw.get("may_encode", False)
    )


# --- reading the request: every field as vLLM's lax pydantic model reads it (issue 11 #1) ---------------------

TRUE = [True, "true", "True", "1", 1, 1.0, "yes", "on", "t", "y"]
FALSE = [False, "false", "0", 0, "off", "no", None]


@pytest.mark.parametrize("value", TRUE)
def test_a_lax_true_include_usage_is_the_clients_own_usage_chunk(value: Any) -> None:
    v = view({**CHAT, "stream": True, "stream_options": {"include_usage": value}})
    assert v.client_wants_usage and not v.injected_usage
    assert v.upstream_body == json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": value}}).encode()


@pytest.mark.parametrize("value", FALSE)
def test_a_lax_false_include_usage_gets_usage_injected(value: Any) -> None:
    v = view({**CHAT, "stream": True, "stream_options": {"include_usage": value}})
    assert not v.client_wants_usage and v.injected_usage
    assert json.loads(v.upstream_body)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("value", TRUE)
def test_continuous_usage_stats_alone_is_never_turned_on_by_an_injection(value: Any) -> None:
    # vLLM: continuous usage needs include_usage too; injecting it would put `usage` into every chunk.
    v = view({**CHAT, "stream": True, "stream_options": {"continuous_usage_stats": value}})
    assert not v.injected_usage and not v.client_wants_usage


@pytest.mark.parametrize("value", TRUE)
def test_a_lax_true_stream_is_a_stream(value: Any) -> None:
    v = view({**CHAT, "stream": value})
    assert v.stream and v.injected_usage


@pytest.mark.parametrize("value", FALSE)
def test_a_lax_false_stream_is_not(value: Any) -> None:
    v = view({**CHAT, "stream": value})
    assert not v.stream and not v.injected_usage


@pytest.mark.parametrize(
    ("n", "read"), [("2", 2), (2.0, 2), (3, 3), ("1", 1), (1.0, 1), (True, 1), (None, 1)], ids=repr
)
def test_n_is_read_laxly(n: Any, read: int) -> None:
    v = view({**CHAT, "stream": True, "n": n})
    assert v.n == read and v.injected_usage == (read == 1)


@pytest.mark.parametrize(
    "body",
    [
        {"stream": "maybe"},
        {"stream": True, "n": 2.5},
        {"stream": True, "n": "x"},
        {"stream": True, "stream_options": "yes"},
        {"stream": True, "stream_options": {"include_usage": "perhaps"}},
        {"stream": True, "model": 5},
    ],
    ids=repr,
)
def test_a_request_vllm_will_reject_gets_nothing_injected(body: dict[str, Any]) -> None:
    v = view({**CHAT, **body})
    assert not v.valid and not v.injected_usage


def test_the_injection_adds_one_member_and_keeps_every_other_byte() -> None:
    raw = b'{ "model" : "tiny",\n "stream": true, "temperature": 0.40, "x": 1e400 }'
    v = view(raw)
    assert v.upstream_body == b'{"stream_options":{"include_usage":true}, "model" : "tiny",\n' + raw[20:]
    assert json.loads(v.upstream_body)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "options",
    [{}, {"include_usage": False}, {"include_usage": None, "extra": [1, "ü"]}, {"continuous_usage_stats": False}, None],
    ids=repr,
)
def test_existing_stream_options_are_kept_and_the_injected_copy_wins(options: Any) -> None:
    v = view({**CHAT, "stream": True, "stream_options": options})
    assert v.injected_usage
    assert json.loads(v.upstream_body)["stream_options"] == {**(options or {}), "include_usage": True}


def test_a_body_not_in_utf8_is_not_rewritten() -> None:
    raw = json.dumps({**CHAT, "stream": True}).encode("utf-16")
    v = view(raw)
    assert v.stream and not v.injected_usage and v.upstream_body == raw


@pytest.mark.parametrize(
    ("header", "only_identity"),
    [
        (None, True),
        ("", True),
        ("identity", True),
        ("gzip;q=0, identity", True),
        ("*;q=0", True),
        ("gzip", False),
        ("gzip, deflate", False),
        ("identity, br", False),
        ("*", False),
        ("gzip;q=bogus", False),
    ],
)
def test_accept_encoding_decides_whether_an_answer_can_be_encoded(header: str | None, only_identity: bool) -> None:
    assert identity_only(header) is only_identity


def test_a_client_accepting_gzip_gets_nothing_injected_where_the_server_may_encode() -> None:
    assert not view({**CHAT, "stream": True}, may_encode=True).injected_usage


# --- the SSE filter: framing (issue 11 #6) --------------------------------------------------------------------

FRAMINGS = {
    "lf": lambda b: b,
    "crlf": lambda b: b.replace(b"\n", b"\r\n"),
    "cr": lambda b: b.replace(b"\n", b"\r"),
    "mixed": lambda b: b.replace(b"\n\n", b"\r\n\n").replace(b"data: [DONE]\r\n\n", b"data: [DONE]\r\r"),
}


def _strip_expected(framed: bytes, frame: Any) -> bytes:
    return framed.replace(frame(usage_event()), b"")


@pytest.mark.parametrize("framing", FRAMINGS)
def test_every_framing_withholds_the_usage_event_at_every_split(framing: str) -> None:
    frame = FRAMINGS[framing]
    upstream = frame(b"".join(stream_events(include_usage=True, continuous=False)))
    expected = frame(b"".join(stream_events(include_usage=False, continuous=False)))
    for cut in range(len(upstream) + 1):
        f = UsageFilter(strip_usage=True)
        got = f.feed(upstream[:cut]) + f.feed(upstream[cut:]) + f.finish()
        assert got == expected, cut
        assert f.usage is not None and f.usage["metrics"]["speculative_decoding"]["num_draft_tokens"] == 48


@pytest.mark.parametrize("framing", FRAMINGS)
def test_watching_returns_every_byte_at_once_and_still_finds_the_usage(framing: str) -> None:
    upstream = FRAMINGS[framing](STREAM_USAGE)
    for size in (1, 2, 7, 64, len(upstream)):
        f = UsageFilter(strip_usage=False)
        pieces = [upstream[i : i + size] for i in range(0, len(upstream), size)]
        assert [f.feed(p) for p in pieces] == pieces
        assert f.finish() == b"" and f.usage is not None


@pytest.mark.parametrize("framing", FRAMINGS)
def test_an_event_goes_out_as_soon_as_it_is_complete(framing: str) -> None:
    # The CR-only bug: no event end was ever found, so the whole stream waited for the end (first byte 2.86 s).
    frame = FRAMINGS[framing]
    events = [frame(e) for e in stream_events(include_usage=True, continuous=False)]
    f = UsageFilter(strip_usage=True)
    assert f.feed(events[0]) == events[0]
    assert f.feed(events[1]) == events[1]


def test_an_lf_after_a_cr_at_the_end_of_a_chunk_belongs_to_that_line() -> None:
    f = UsageFilter(strip_usage=True)
    first = f.feed(b"data: a\r\n\r")  # event complete at the CR; its LF may still come
    assert first == b"data: a\r\n\r"
    assert f.feed(b"\ndata: b\r") == b"\n"
    assert f.feed(b"\n\r\n") == b"data: b\r\n\r\n"
    assert f.data_events == 2


def test_a_withheld_events_trailing_lf_is_withheld_too() -> None:
    usage = usage_event().replace(b"\n\n", b"\r\n\r")
    f = UsageFilter(strip_usage=True)
    assert f.feed(usage) == b""
    assert f.feed(b"\ndata: [DONE]\r\n\r\n") == b"data: [DONE]\r\n\r\n"


def test_multi_line_data_and_comments_follow_the_sse_spec() -> None:
    assert event_data(b": keep-alive\n\n") is None
    assert event_data(b'data: {"a":\ndata:1}\n\n') == b'{"a":\n1}'
    assert event_data(b"data\n\n") == b""


def test_a_stream_with_continuous_usage_from_vllm_itself_is_not_stripped() -> None:
    # --enable-force-include-usage: vLLM sends usage in every chunk and the usage event to every client.
    upstream = b"".join(stream_events(include_usage=True, continuous=True))
    f = UsageFilter(strip_usage=True)
    assert f.feed(upstream) + f.finish() == upstream and f.usage is not None


def test_a_malformed_usage_looking_event_passes_and_is_noted() -> None:
    bad = b'data: {"choices":[],"usage":{\n\n'
    f = UsageFilter(strip_usage=True)
    assert f.feed(bad) == bad and f.malformed == 1 and f.usage is None


# --- the Exchange ---------------------------------------------------------------------------------------------


def run(
    body: bytes,
    *,
    metrics: TapMetrics,
    settings: TapSettings | None = None,
    standin: VLLMStandIn | None = None,
    path: str = "/v1/chat/completions",
    server_may_encode: bool = False,
    accept_encoding: str | None = None,
    content_encoding: str | None = None,
    piece: int | None = None,
) -> tuple[bytes | None, bytes]:
    standin = standin or VLLMStandIn()
    ex = Exchange(metrics, settings or TapSettings(), clock=FakeClock(), server_may_encode=server_may_encode)
    forwarded = ex.request(body, accept_encoding=accept_encoding)
    answer = standin.answer(path, forwarded if forwarded is not None else b"")
    headers = dict(answer.headers)
    ex.response_start(
        answer.status,
        content_type=headers.get("content-type"),
        content_encoding=content_encoding,
        content_length="content-length" in headers,
    )
    data = b"".join(answer.chunks)
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)] if piece else answer.chunks
    out = b"".join(ex.response_body(p) for p in pieces) + ex.response_end()
    return forwarded, out


def counts(
    registry: CollectorRegistry, name: str = "spec_tap_requests_total", workload: str = "default"
) -> dict[tuple[str, ...], float]:
    """Non-zero samples of `name` for one workload class, keyed by their other label values in name order."""
    return {
        tuple(v for k_, v in k[1] if k_ != "workload"): v
        for k, v in samples(registry).items()
        if k[0] == name and v and dict(k[1]).get("workload", workload) == workload
    }


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> TapMetrics:
    return TapMetrics(registry)


def test_a_crash_reading_the_request_forwards_the_original_body(
    monkeypatch: pytest.MonkeyPatch, metrics: TapMetrics, registry: CollectorRegistry
) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(exchange_module, "read_request", boom)
    body = json.dumps({**CHAT, "stream": True}).encode()
    forwarded, out = run(body, metrics=metrics)
    assert forwarded == body and out == direct("/v1/chat/completions", body)
    assert counts(registry, "spec_tap_errors_total") == {("internal",): 1}
    assert counts(registry) == {("unknown", "not_measurable", "unknown"): 1}


@pytest.mark.parametrize("where", ["_on_event", "feed", "finish", "_release"])
def test_a_crash_in_the_stream_filter_passes_every_byte_vllm_sent(
    where: str, monkeypatch: pytest.MonkeyPatch, metrics: TapMetrics, registry: CollectorRegistry
) -> None:
    real = getattr(sse_module.UsageFilter, where)
    calls = {"n": 0}

    def flaky(self: Any, *a: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2 or where in ("finish", "_release"):
            raise RuntimeError("bug")
        return real(self, *a)

    monkeypatch.setattr(sse_module.UsageFilter, where, flaky)
    body = json.dumps({**CHAT, "stream": True}).encode()
    for piece in (None, 1, 50):
        calls["n"] = 0
        forwarded, out = run(body, metrics=metrics, piece=piece)
        assert forwarded is not None and forwarded != body  # usage was injected: the two answers differ
        # Fail-open: what went out before the crash was already right, the rest passes as vLLM sent it. A crash
        # before the usage event lets that event through (exactly what vLLM sent for the injected body); a crash
        # in `finish`, after the usage event was stripped, leaves only [DONE] to pass: the stream the client asked
        # for.
        asked = where == "finish"
        assert out == direct("/v1/chat/completions", body if asked else forwarded), piece
    assert counts(registry, "spec_tap_errors_total")[("internal",)] == 3


def test_an_encoded_response_to_an_injected_request_is_passed_untouched_and_counted(
    metrics: TapMetrics, registry: CollectorRegistry
) -> None:
    body = json.dumps({**CHAT, "stream": True}).encode()
    forwarded, out = run(body, metrics=metrics, content_encoding="gzip")
    assert out == direct("/v1/chat/completions", forwarded or b"")
    assert counts(registry, "spec_tap_errors_total") == {("response",): 1}
    assert counts(registry) == {("tiny", "not_measurable", "1.0+"): 1}


def test_a_request_body_over_the_cap_is_not_read(metrics: TapMetrics, registry: CollectorRegistry) -> None:
    body = json.dumps({**CHAT, "stream": True, "temperature": 0.4}).encode()
    forwarded, out = run(body, metrics=metrics, settings=TapSettings(max_inspect_bytes=len(body) - 1))
    assert forwarded == body and out == direct("/v1/chat/completions", body)
    assert counts(registry) == {("unknown", "not_measurable", "unknown"): 1}
    assert counts(registry, "spec_tap_errors_total") == {}


def test_a_response_over_the_cap_is_not_measured(metrics: TapMetrics, registry: CollectorRegistry) -> None:
    body = json.dumps({**CHAT, "temperature": 0.7}).encode()
    settings = TapSettings(max_inspect_bytes=len(body) + 10)
    _, out = run(body, metrics=metrics, settings=settings, standin=VLLMStandIn(json_chunk_size=100))
    assert out == direct("/v1/chat/completions", body)
    assert counts(registry) == {("tiny", "not_measurable", "0.7-1.0"): 1}


def test_a_compressed_request_body_is_not_understood(metrics: TapMetrics, registry: CollectorRegistry) -> None:
    ex = Exchange(metrics, TapSettings(), clock=FakeClock(), server_may_encode=True)
    body = b"\x1f\x8b\x08\x00compressed"
    assert ex.request(body, content_encoding="gzip") == body
    ex.response_start(400, content_type="application/json", content_encoding=None, content_length=True)
    ex.response_end()
    assert counts(registry) == {("unknown", "not_understood", "unknown"): 1}


def test_each_exchange_folds_exactly_once(metrics: TapMetrics, registry: CollectorRegistry) -> None:
    ex = Exchange(metrics, TapSettings(), clock=FakeClock(), server_may_encode=False)
    ex.request(json.dumps({**CHAT, "stream": True}).encode())
    ex.response_start(200, content_type="text/event-stream", content_encoding=None, content_length=False)
    ex.response_body(stream_events(True, False)[0])
    ex.client_gone()
    ex.upstream_failed()
    ex.response_end()
    assert counts(registry) == {("tiny", "client_disconnected", "1.0+"): 1}


def test_a_plain_body_labelled_gzip_is_read_as_vllm_reads_it_and_never_rewritten(
    metrics: TapMetrics, registry: CollectorRegistry
) -> None:
    # vLLM decodes no request body: it parses these bytes as they are, and serves the request.
    ex = Exchange(metrics, TapSettings(), clock=FakeClock(), server_may_encode=False)
    body = json.dumps({**CHAT, "stream": True, "temperature": 0.4}).encode()
    assert ex.request(body, content_encoding="gzip") == body
    ex.response_start(200, content_type="text/event-stream", content_encoding=None, content_length=False)
    for event in stream_events(False, False):
        ex.response_body(event)
    ex.response_end()
    assert counts(registry) == {("tiny", "not_measurable", "0.3-0.5"): 1}
    assert counts(registry, "spec_tap_errors_total") == {}


def test_each_prompts_terminal_chunk_gets_its_fingerprint_back_in_order() -> None:
    upstream = b"".join(stream_events(include_usage=True, continuous=False, prompts=3))
    expected = b"".join(stream_events(include_usage=False, continuous=False, prompts=3))
    assert expected.count(b"system_fingerprint") == 3
    for cut in range(0, len(upstream) + 1, 13):
        f = UsageFilter(strip_usage=True)
        got = f.feed(upstream[:cut]) + f.feed(upstream[cut:]) + f.finish()
        assert got == expected, cut


@pytest.mark.parametrize("fingerprint", ['vllm "custom" \\ fp', "ünïcode-☃", "tab\there", ""])
def test_a_custom_fingerprint_goes_back_byte_for_byte(fingerprint: str) -> None:
    # vLLM's --fingerprint-mode custom --fingerprint-value: any string, serialised with JSON escapes.
    upstream = b"".join(stream_events(include_usage=True, continuous=False, fingerprint=fingerprint))
    expected = b"".join(stream_events(include_usage=False, continuous=False, fingerprint=fingerprint))
    f = UsageFilter(strip_usage=True)
    assert f.feed(upstream) + f.finish() == expected


def test_a_completion_with_several_prompts_gets_nothing_injected() -> None:
    for prompt in (["a", "b"], [[1, 2], [3]]):
        v = view({"model": "tiny", "prompt": prompt, "stream": True})
        assert v.several_prompts and not v.injected_usage
    for prompt in ("a", ["a"], [1, 2, 3], [[1, 2]]):
        v = view({"model": "tiny", "prompt": prompt, "stream": True})
        assert not v.several_prompts and v.injected_usage


@pytest.mark.parametrize(
    ("raw", "band"),
    [
        # json.loads semantics, which vLLM's FastAPI uses: the last of duplicate keys wins, NaN and 1e400 read.
        (b'{"temperature": 0.1, "temperature": 0.9}', "0.7-1.0"),
        (b'{"temperature": NaN}', "invalid"),
        (b'{"temperature": 1e400}', "invalid"),
        (b'{"temperature": "0.4", "messages": [{"content": "\\ud800"}]}', "0.3-0.5"),
        (b"\xef\xbb\xbf" + b'{"temperature": 0}', "0"),
        ('{"temperature": 0.2}'.encode("utf-32"), "0-0.3"),
    ],
)
def test_the_top_level_reads_as_json_loads_reads_it(raw: bytes, band: str) -> None:
    assert view(raw).temperature_band == band


def test_a_deeply_nested_body_reads_as_json_loads_reads_it() -> None:
    deep = b'{"temperature": 0.4, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    try:
        json.loads(deep)
    except RecursionError:
        with pytest.raises(Exception, match="not JSON"):
            view(deep)
    else:
        assert view(deep).temperature_band == "0.3-0.5"


def test_the_injected_member_is_taken_out_of_vllms_validation_echo() -> None:
    real = (RESPONSES / "validation_missing_messages.json").read_bytes()  # vLLM's answer to 2 members
    injected = real.replace(b"<dict of 2 items>", b"<dict of 3 items>")
    assert undo_echo(injected) == real


def test_only_the_bodys_own_summary_is_corrected() -> None:
    # Captured from vLLM 0.32's handler: the body (3 members + the injected one) lacks messages, and max_tokens is
    # a dict of 4 items; only the first summary is the body's.
    answer = (
        b"{\"error\":{\"message\":\"2 validation errors:\\n  {'type': 'missing', 'loc': 'body.messages', 'msg': "
        b"'Field required', 'input': '<dict of 4 items>'}\\n  {'type': 'int_type', 'loc': 'body.max_tokens', "
        b"'msg': 'Input should be a valid integer', 'input': '<dict of 4 items>'}\",\"type\":\"Bad Request\","
        b'"param":"body.messages","code":400}}'
    )
    undone = undo_echo(answer)
    assert undone == answer.replace(b"<dict of 4 items>", b"<dict of 3 items>", 1)
    nested = answer.replace(b"'loc': 'body.messages'", b"'loc': 'body.messages.0.role'")
    assert undo_echo(nested) == nested
