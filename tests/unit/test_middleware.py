"""SpecDecodeMiddleware driven as a raw ASGI app around a stand-in vLLM that replays the captured responses.
Properties it shares with the proxy tap run against both in tests/unit/test_join_frontends.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import weakref
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from spec_exporter.config import TapConfig
from spec_exporter.tap import asgi as middleware_module
from spec_exporter.tap import sse as sse_module
from spec_exporter.tap import voice
from spec_exporter.tap.asgi import SpecDecodeMiddleware
from spec_exporter.tap.metrics import TapMetrics
from spec_exporter.tap.settings import TapSettings, settings_from_env
from tests.asgi_vllm import VLLMApp, call
from tests.conftest import FakeClock
from tests.unit.test_join import counts
from tests.vllm_answers import VLLMStandIn, direct, usage_chunk

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24}
PATH = "/v1/chat/completions"


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, TapMetrics] = weakref.WeakKeyDictionary()


def tapped(app: Any, registry: CollectorRegistry, **settings: Any) -> SpecDecodeMiddleware:
    metrics = _METRICS.get(registry) or _METRICS.setdefault(registry, TapMetrics(registry))
    return SpecDecodeMiddleware(app, metrics=metrics, settings=TapSettings(**settings), clock=FakeClock())


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def every_offset(data: bytes) -> list[list[bytes]]:
    return [[data[:k], data[k:]] for k in range(1, len(data))]


async def test_streamed_events_split_at_every_byte_offset_reach_the_client_as_without_the_middleware(
    registry: CollectorRegistry,
) -> None:
    body = json.dumps({**CHAT, "stream": True, "temperature": 0.4}).encode()
    expected = direct(PATH, body)
    upstream = direct(PATH, json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": True}}).encode())
    cuts = every_offset(upstream)
    for pieces in cuts:
        app = VLLMApp(split=lambda _, p=pieces: [x for x in p if x])
        got = await call(tapped(app, registry), PATH, body)
        assert got.body == expected
    assert counts(registry) == {("tiny", "measured", "0.3-0.5"): len(cuts)}
    accepted = usage_chunk()["metrics"]["speculative_decoding"]["num_accepted_draft_tokens"]
    assert counts(registry, "spec_tap_accepted_tokens_total") == {("tiny", "0.3-0.5"): accepted * len(cuts)}


@pytest.mark.parametrize("size", [1, 3, 17])
async def test_byte_sized_messages_with_crlf_framing(size: int, registry: CollectorRegistry) -> None:
    crlf = VLLMStandIn(frame=lambda e: e.replace(b"\n", b"\r\n"))
    body = json.dumps({**CHAT, "stream": True}).encode()
    app = VLLMApp(standin=crlf, split=lambda d: [d[i : i + size] for i in range(0, len(d), size)])
    got = await call(tapped(app, registry), PATH, body)
    assert got.body == direct(PATH, body, crlf)
    assert counts(registry) == {("tiny", "measured", "1.0+"): 1}


async def test_the_app_gets_the_injected_body_with_a_matching_content_length(registry: CollectorRegistry) -> None:
    app = VLLMApp()
    body = json.dumps({**CHAT, "stream": True}).encode()
    await call(tapped(app, registry), PATH, body, body_pieces=7)
    (received,) = app.standin.received
    assert json.loads(received) == {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    assert dict(app.scopes[0]["headers"])[b"content-length"] == str(len(received)).encode()


async def test_a_body_over_the_cap_reaches_the_app_message_for_message(registry: CollectorRegistry) -> None:
    app = VLLMApp()
    body = json.dumps({**CHAT, "stream": True, "pad": "x" * 20_000}).encode()
    got = await call(tapped(app, registry, max_inspect_bytes=4096), PATH, body, body_pieces=1000)
    assert app.standin.received == [body]
    assert got.body == direct(PATH, body)
    assert counts(registry) == {("unknown", "not_measurable", "unknown"): 1}


async def test_the_whole_body_is_read_ahead_only_up_to_the_cap(registry: CollectorRegistry) -> None:
    # Twenty megabytes in 64 KiB messages: passed through in the same messages, not inspected.
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"too large"})

    body = b'{"stream": true, "pad": "' + b"x" * (20 * 1024 * 1024) + b'"}'
    got = await call(tapped(app, registry), PATH, body, body_pieces=65536)
    assert got.status == 413 and sum(seen) == len(body) and len(seen) == -(-len(body) // 65536)
    assert counts(registry) == {("unknown", "upstream_error", "unknown"): 1}


@pytest.mark.parametrize(
    ("where", "json_too"),
    [
        # Whether the non-streamed JSON answer reaches the broken code too (the stream always does).
        ((middleware_module, "_header"), True),
        ((middleware_module, "_with_length"), False),  # only an injected body gets a new Content-Length
        ((middleware_module._Tapped, "_rewrite"), True),
        ((sse_module.UsageFilter, "feed"), False),
        ((sse_module, "event_data"), False),
    ],
    ids=lambda w: w[1] if isinstance(w, tuple) else str(w),
)
async def test_an_exception_inside_the_middleware_changes_nothing_and_is_counted(
    where: tuple[Any, str], json_too: bool, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(*where, boom)
    bodies = {
        "0.3-0.5": json.dumps({**CHAT, "stream": True, "temperature": 0.4}).encode(),
        "0.7-1.0": json.dumps({**CHAT, "temperature": 0.7}).encode(),
    }
    for body in bodies.values():
        app = VLLMApp()
        got = await call(tapped(app, registry), PATH, body)
        plain = await call(VLLMApp(), PATH, app.standin.received[0])
        # Exactly what vLLM sent for the body it received: status, headers, every byte.
        assert (got.status, got.headers, got.body) == (plain.status, plain.headers, plain.body)
    # One failure per request that met the bug, counted once (not once per message), and the request folded as
    # not measurable: a bug of ours is never reported as vLLM's error.
    broke = {"0.3-0.5": True, "0.7-1.0": json_too}
    assert counts(registry, "spec_tap_errors_total") == {("internal",): sum(broke.values())}
    folded: dict[tuple[str, str, str], int] = {}
    for band, failed in broke.items():
        # The request headers are read before the body: a crash there leaves the request unread.
        key = ("unknown", "not_measurable", "unknown") if where[1] == "_header" else ("tiny", "not_measurable", band)
        key = key if failed else ("tiny", "measured", band)
        folded[key] = folded.get(key, 0) + 1
    assert counts(registry) == folded


async def test_a_client_disconnect_passes_through_and_is_counted(registry: CollectorRegistry) -> None:
    app = VLLMApp()
    body = json.dumps({**CHAT, "stream": True, "temperature": 0.4}).encode()
    got = await call(tapped(app, registry), PATH, body, disconnect_after=3)
    assert app.cancelled  # the app saw the disconnect and stopped generating, as without the middleware
    assert got.body == b"".join(direct(PATH, body).split(b"\n\n")[i] + b"\n\n" for i in range(3))
    assert counts(registry) == {("tiny", "client_disconnected", "0.3-0.5"): 1}


async def test_cancellation_propagates_and_is_counted(registry: CollectorRegistry) -> None:
    started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        started.set()
        await asyncio.Event().wait()

    body = json.dumps({**CHAT, "stream": True}).encode()
    task = asyncio.ensure_future(call(tapped(app, registry), PATH, body))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert counts(registry) == {("tiny", "client_disconnected", "1.0+"): 1}


async def test_an_app_failing_mid_stream_raises_through_and_counts_upstream_error(
    registry: CollectorRegistry,
) -> None:
    app = VLLMApp(raise_after=4)
    with pytest.raises(RuntimeError, match="mid-stream"):
        await call(tapped(app, registry), PATH, json.dumps({**CHAT, "stream": True}).encode())
    assert counts(registry) == {("tiny", "upstream_error", "1.0+"): 1}


async def test_a_receive_failure_reaches_the_app_as_it_would_have() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await receive()
            await receive()
        except OSError as e:
            seen.append(str(e))
            raise

    async def receive() -> dict[str, Any]:
        if not seen and not hasattr(receive, "done"):
            receive.done = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": b'{"stream": true', "more_body": True}
        raise OSError("connection lost")

    async def send(_: Any) -> None:
        raise AssertionError("nothing to send")

    scope = {"type": "http", "method": "POST", "path": PATH, "headers": []}
    mw = tapped(app, CollectorRegistry())
    with pytest.raises(OSError, match="connection lost"):
        await mw(scope, receive, send)
    assert seen == ["connection lost"]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/models"), ("POST", "/v1/embeddings"), ("GET", PATH), ("POST", "/metrics")]
)
async def test_other_requests_go_straight_to_the_app(method: str, path: str, registry: CollectorRegistry) -> None:
    app = VLLMApp()
    got = await call(tapped(app, registry), path, b"{}", method=method)
    assert got.header("x-upstream") == "vllm" and counts(registry) == {}
    assert app.scopes[0]["path"] == path


async def test_non_http_scopes_go_straight_to_the_app() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = tapped(app, CollectorRegistry())
    for kind in ("lifespan", "websocket"):
        await mw({"type": kind, "path": PATH, "method": "POST"}, None, None)
    assert seen == ["lifespan", "websocket"]


def test_the_environment_and_the_config_file_default_alike() -> None:
    # The middleware (environment) and the exporter (config file) must agree on what a band is, and on the rest.
    from_env = settings_from_env({})
    from_config = TapConfig()
    assert from_env.model_dump() == from_config.model_dump(include=set(TapSettings.model_fields))
    assert from_env.bands == from_config.bands


def test_settings_come_from_the_environment() -> None:
    settings = settings_from_env(
        {
            "SPEC_EXPORTER_TAP_TEMPERATURE_BANDS": "0.2, 0.8",
            "SPEC_EXPORTER_TAP_DEFAULT_TEMPERATURE": "0.7",
            "SPEC_EXPORTER_TAP_MAX_MODELS": "3",
            "SPEC_EXPORTER_TAP_MAX_INSPECT_BYTES": "1024",
            "SPEC_EXPORTER_TAP_INJECT_USAGE": "false",
        }
    )
    assert settings == TapSettings(
        temperature_bands=[0.2, 0.8], default_temperature=0.7, max_models=3, max_inspect_bytes=1024, inject_usage=False
    )
    assert settings.bands.labels[:4] == ("0", "0-0.2", "0.2-0.8", "0.8+")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # Each number reads, but the edges are not increasing: the bands as a whole are refused.
        ("TEMPERATURE_BANDS", "0.5,0.3"),
        ("TEMPERATURE_BANDS", "warm"),
        ("TEMPERATURE_BANDS", "0.3,,0.7"),
        ("TEMPERATURE_BANDS", "0.5,2.5"),
        ("DEFAULT_TEMPERATURE", "hot"),
        ("DEFAULT_TEMPERATURE", "nan"),
        ("DEFAULT_TEMPERATURE", "3"),
        ("MAX_MODELS", "-1"),
        ("MAX_MODELS", "1.5"),
        ("MAX_INSPECT_BYTES", "8 parsecs"),
        ("MAX_INSPECT_BYTES", "0"),
        ("INJECT_USAGE", "maybe"),
        ("INJECT_USAGE", "\udcff"),
    ],
)
def test_an_unusable_setting_is_logged_and_defaulted_never_fatal(
    name: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A usable neighbour keeps its value: one bad variable costs only itself.
    neighbour, kept = ("MAX_MODELS", 7) if name != "MAX_MODELS" else ("INJECT_USAGE", False)
    env = {f"SPEC_EXPORTER_TAP_{name}": value, f"SPEC_EXPORTER_TAP_{neighbour}": str(kept).lower()}
    assert settings_from_env(env) == TapSettings(**{neighbour.lower(): kept})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"SPEC_EXPORTER_TAP_{name}={value!r}" in warnings[0], warnings


async def test_garbage_in_every_variable_still_builds_a_working_middleware(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # What vLLM does at startup, cls(app), with nothing usable in the environment: it must serve, on the defaults.
    for field in TapSettings.model_fields:
        monkeypatch.setenv(f"SPEC_EXPORTER_TAP_{field.upper()}", "\u00e9garbage,")
    registry = CollectorRegistry()
    app = VLLMApp(VLLMStandIn())
    mw = SpecDecodeMiddleware(app, metrics=TapMetrics(registry))
    assert mw.settings == TapSettings()
    warned = {r.getMessage().split("=")[0].rsplit(" ", 1)[-1] for r in caplog.records if r.levelname == "WARNING"}
    assert warned == {f"SPEC_EXPORTER_TAP_{field.upper()}" for field in TapSettings.model_fields}
    body = json.dumps({**CHAT, "temperature": 0.4}).encode()
    got = await call(mw, PATH, body)
    assert got.status == 200
    assert counts(registry) == {("tiny", "measured", "0.3-0.5"): 1}


def test_a_failure_of_our_own_reading_the_environment_still_builds_the_middleware(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(env: Any) -> TapSettings:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(middleware_module, "settings_from_env", broken)
    mw = SpecDecodeMiddleware(VLLMApp(), metrics=TapMetrics(CollectorRegistry()))
    assert mw.settings == TapSettings()
    assert any("could not read the SPEC_EXPORTER_TAP_* settings" in r.getMessage() for r in caplog.records)


def test_importing_the_middleware_pulls_in_nothing_vllm_lacks() -> None:
    script = (
        "import sys, spec_exporter.middleware as m; m.SpecDecodeMiddleware; "
        "bad = sorted(n for n in ('aiohttp', 'structlog', 'yaml', 'multidict', 'yarl', 'spec_exporter.config', "
        "'spec_exporter.tap.proxy', 'spec_exporter.app') if n in sys.modules); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_built_with_the_app_alone_it_registers_in_the_default_registry_once() -> None:
    # What vLLM does: app.add_middleware(cls) → cls(app); a second build must not collide in the registry.
    script = (
        "from prometheus_client import REGISTRY, generate_latest\n"
        "from spec_exporter.middleware import SpecDecodeMiddleware\n"
        "a = SpecDecodeMiddleware(lambda *a: None); b = SpecDecodeMiddleware(lambda *a: None)\n"
        "assert a.metrics is b.metrics\n"
        "print(b'spec_tap_errors_total{stage=\"internal\"} 0.0' in generate_latest(REGISTRY))\n"
    )
    env = {**os.environ, "SPEC_EXPORTER_TAP_MAX_MODELS": "2"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# --- issue 20: disconnects, --root-path, other endpoints, the voice, big bodies --------------------------------


async def test_a_client_reset_mid_body_is_a_client_disconnect(registry: CollectorRegistry) -> None:
    # uvicorn hands the app http.disconnect; FastAPI turns the body it could not read into a 400 that nobody reads.
    answered: list[int] = []

    async def fastapi_like(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                answered.append(400)
                await send({"type": "http.response.start", "status": 400, "headers": []})
                await send({"type": "http.response.body", "body": b'{"detail":"There was an error parsing the body"}'})
                return
            if not message.get("more_body"):
                raise AssertionError("the body was complete")

    messages = iter(
        [
            {"type": "http.request", "body": b'{"model": "tiny", "stream": tr', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(_: Any) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": PATH, "headers": [], "root_path": ""}
    await tapped(fastapi_like, registry)(scope, receive, send)
    assert answered == [400]
    assert counts(registry) == {("unknown", "client_disconnected", "unknown"): 1}


async def test_behind_a_root_path_the_paths_vllm_routes_are_joined(registry: CollectorRegistry) -> None:
    body = json.dumps({**CHAT, "stream": True, "temperature": 0.4}).encode()
    for path in ("/api" + PATH, PATH):
        got = await call(tapped(VLLMApp(), registry), path, body, root_path="/api")
        assert got.body == direct(PATH, body)
    assert counts(registry) == {("tiny", "measured", "0.3-0.5"): 2}


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages", "/v1/chat/completions/batch", "/api/v1/responses"])
async def test_other_generating_endpoints_are_counted_and_left_alone(path: str, registry: CollectorRegistry) -> None:
    app = VLLMApp()
    body = json.dumps({"model": "tiny", "input": "hi", "stream": True, "temperature": 0.2}).encode()
    got = await call(tapped(app, registry), path, body, root_path="/api")
    assert got.header("x-upstream") == "vllm" and got.body == b'{"object":"list"}'
    assert app.standin.received == [] and app.scopes[0]["path"] == path
    assert counts(registry) == {("tiny", "other_endpoint", "0-0.3"): 1}
    assert counts(registry, "spec_tap_errors_total") == {}


async def test_a_form_upload_to_a_transcription_endpoint_is_counted_without_an_error(
    registry: CollectorRegistry,
) -> None:
    headers = [(b"content-type", b"multipart/form-data; boundary=x")]
    await call(tapped(VLLMApp(), registry), "/v1/audio/transcriptions", b"--x\r\n\r\nRIFF--x--", headers=headers)
    assert counts(registry) == {("unknown", "other_endpoint", "unknown"): 1}
    assert counts(registry, "spec_tap_errors_total") == {}


async def test_the_corrected_validation_error_keeps_a_true_content_length(registry: CollectorRegistry) -> None:
    # Nine members, ten with the injected one: the undone answer is a byte shorter than vLLM's.
    body = json.dumps({"model": "tiny", "stream": True, **{f"x{i}": i for i in range(7)}}).encode()
    got = await call(tapped(VLLMApp(), registry), PATH, body)
    assert got.status == 400 and got.body == direct(PATH, body)
    assert b"<dict of 9 items>" in got.body and got.header("content-length") == str(len(got.body))
    assert [m["type"] for m in got.messages] == ["http.response.start", "http.response.body"]


@pytest.fixture
def vllm_log(monkeypatch: pytest.MonkeyPatch) -> Any:
    """vLLM's logging as vllm/logger.py configures it: a handler on the "vllm" logger, which does not propagate."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    vllm = logging.getLogger("vllm")
    handler = Keep(logging.INFO)
    monkeypatch.setattr(vllm, "propagate", False)
    monkeypatch.setattr(voice, "_said", set())
    level = vllm.level
    vllm.setLevel(logging.INFO)
    vllm.addHandler(handler)
    yield records
    vllm.removeHandler(handler)
    vllm.setLevel(level)


async def test_the_middleware_speaks_through_vllms_log_once_per_condition(
    vllm_log: list[Any], registry: CollectorRegistry
) -> None:
    no_flag = VLLMStandIn()
    no_flag_app = VLLMApp(standin=no_flag)
    plain = json.loads(direct(PATH, json.dumps(CHAT).encode()))
    plain["metrics"] = None
    secret = "the secret prompt"
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": secret}]}).encode()
    headers = [(b"authorization", b"Bearer sk-secret"), (b"content-length", str(len(body)).encode())]

    async def answer_without_metrics(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        payload = json.dumps(plain).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    for _ in range(3):
        await call(tapped(answer_without_metrics, registry), PATH, body, headers=headers)
        await call(tapped(no_flag_app, registry), PATH, json.dumps({**CHAT, "stop": "og"}).encode())
        await call(tapped(no_flag_app, registry), "/v1/responses", b"{}")
    settings_from_env({"SPEC_EXPORTER_TAP_MAX_MODELS": "many"})
    settings_from_env({"SPEC_EXPORTER_TAP_MAX_MODELS": "many"})
    said = [(r.name, r.levelname, r.getMessage()) for r in vllm_log]
    assert [m.split(";")[0] for _, _, m in said] == [
        "spec_exporter: vLLM answers without per-request speculative-decoding metrics",
        "spec_exporter: vLLM reports no per-request speculative-decoding metrics for a request that ends on a stop "
        "string or has several prompts",
        "spec_exporter: /v1/responses answers carry no per-request speculative-decoding metrics",
        "spec_exporter: ignoring SPEC_EXPORTER_TAP_MAX_MODELS='many' (Input should be a valid integer, unable to parse "
        "string as an integer)",
    ]
    assert {name for name, _, _ in said} == {"vllm.spec_exporter"}
    assert not any(secret in m or "sk-secret" in m for _, _, m in said)


async def test_a_big_body_is_read_in_a_loop_iteration_apart_from_vllms(registry: CollectorRegistry) -> None:
    # The event loop's longest stall is then the longer of the two parses, not their sum.
    loop = asyncio.get_running_loop()
    ticked: list[bool] = []
    big = json.dumps({**CHAT, "stream": True, "pad": "x" * 300_000}).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        ticked.append(bool(marks))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    marks: list[int] = []
    bodies = [json.dumps(CHAT).encode(), big]

    async def receive() -> dict[str, Any]:
        # Like a stream's timer coming due during the parse: its callback wakes the stream's task, which runs an
        # iteration later. vLLM's parse must wait for that task too.
        loop.call_soon(loop.call_soon, marks.append, 1)
        return {"type": "http.request", "body": bodies[len(ticked)], "more_body": False}

    async def send(_: Any) -> None:
        pass

    for _ in bodies:
        marks.clear()
        scope = {"type": "http", "method": "POST", "path": PATH, "headers": []}
        await tapped(app, registry)(scope, receive, send)
    assert ticked == [False, True]


async def test_an_app_failing_after_starting_a_held_error_answer_still_starts_it(registry: CollectorRegistry) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-length", b"99")]})
        raise RuntimeError("vLLM failed mid-answer")

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps({"model": "tiny", "stream": True}).encode()}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": PATH, "headers": []}
    with pytest.raises(RuntimeError, match="mid-answer"):
        await tapped(app, registry)(scope, receive, send)
    assert [(m["type"], m["status"]) for m in sent] == [("http.response.start", 400)]
    assert counts(registry) == {("tiny", "upstream_error", "1.0+"): 1}
