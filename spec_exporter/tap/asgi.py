"""The tap inside vLLM's API server: a pure ASGI middleware, loaded with

    vllm serve MODEL --middleware spec_exporter.middleware.SpecDecodeMiddleware \\
        --per-request-spec-decode-metrics summary

vLLM adds a middleware class with `app.add_middleware(cls)`, so Starlette builds it as `cls(app)` and its settings
come from the environment: `SPEC_EXPORTER_TAP_<FIELD>` for each field of `spec_exporter.tap.settings.TapSettings`
(the exporter's `tap.*` settings, under the same defaults and validation):

    SPEC_EXPORTER_TAP_TEMPERATURE_BANDS    temperature band edges, comma-separated
    SPEC_EXPORTER_TAP_DEFAULT_TEMPERATURE  the temperature of a request without one
    SPEC_EXPORTER_TAP_MAX_MODELS           distinct model_name label values per process
    SPEC_EXPORTER_TAP_MAX_INSPECT_BYTES    request bodies (and JSON responses) larger than this are not read
    SPEC_EXPORTER_TAP_INJECT_USAGE         ask vLLM for the usage chunk of a stream whose client did not
    SPEC_EXPORTER_TAP_WORKLOAD_HEADER      the request header naming a request's workload class (e.g. x-workload)
    SPEC_EXPORTER_TAP_WORKLOAD_FROM_MODEL  else the served model alias is the class
    SPEC_EXPORTER_TAP_WORKLOAD_FROM_ROUTE  else the route prefix (root_path or X-Forwarded-Prefix) is the class
    SPEC_EXPORTER_TAP_WORKLOADS            the classes kept as labels, comma-separated (the rest count as other)
    SPEC_EXPORTER_TAP_MAX_WORKLOADS        without that list, distinct classes kept per process

An unusable value is logged and its default used: a monitoring setting must never keep vLLM from serving.

POST /v1/chat/completions and /v1/completions are joined; vLLM's other generating endpoints (OTHER_GENERATING_PATHS:
/v1/responses, /v1/messages, the batch route, ...) are counted as outcome other_endpoint and otherwise left alone;
everything else goes straight to the app. Paths are matched as vLLM's router matches them, after `--root-path`. The
per-band `spec_tap_*` series go into prometheus_client's default registry, so they appear on vLLM's own /metrics
(summed across API-server processes when vLLM runs them in multiprocess mode).

vLLM's API server never content-encodes its answers (no compression middleware in 0.32; user middlewares wrap
vLLM's own), so usage is injected whatever the client's Accept-Encoding. If an answer arrives encoded anyway (a
compressing middleware listed before this one), it passes untouched and is counted as not measurable.

Fail-open by construction: the body messages read ahead are replayed as they came if anything of ours fails, every
response message goes out as the app sent it unless the tap's core rewrote it, the core never raises, and the
app's exceptions and cancellation (client gone) pass through unchanged.

Imports only the standard library, prometheus_client, pydantic and spec_exporter.tap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from spec_exporter.tap.exchange import Exchange
from spec_exporter.tap.metrics import REMEDY, ErrorStage, Outcome, TapMetrics
from spec_exporter.tap.request import INSPECTED_PATHS, OTHER_GENERATING_PATHS
from spec_exporter.tap.settings import TapSettings, settings_from_env
from spec_exporter.tap.speculative import from_asgi_scope
from spec_exporter.tap.voice import log, say_once
from spec_exporter.tap.workload import FORWARDED_PREFIX, route_prefix

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_default_lock = threading.Lock()
_default_metrics: TapMetrics | None = None


def default_metrics(max_models: int, settings: TapSettings | None = None) -> TapMetrics:
    """The families in prometheus_client's default registry, created once per process (a second registration
    would be refused; vLLM may build its middleware stack more than once)."""
    global _default_metrics
    with _default_lock:
        if _default_metrics is None:
            workloads = settings.workload_classes() if settings is not None else None
            _default_metrics = TapMetrics(max_models=max_models, workloads=workloads)
        return _default_metrics


def _settings_from_environment() -> TapSettings:
    try:
        return settings_from_env(os.environ)
    except Exception:
        # settings_from_env refuses bad values one by one; this is for a failure of our own, which must not keep
        # vLLM from starting either.
        log.exception("spec_exporter: could not read the SPEC_EXPORTER_TAP_* settings; using the defaults")
        return TapSettings()


def _note_outcome(exchange: Exchange, path: str) -> None:
    """What an operator should hear about a folded request, once per condition. Never raises."""
    try:
        _say_outcome(exchange.outcome, path)
    except Exception:  # a voice that fails must not become the request's failure
        pass


def _say_outcome(outcome: Outcome | None, path: str) -> None:
    if outcome is Outcome.NO_SPEC_METRICS:
        say_once(
            ("remedy",),
            logging.WARNING,
            "spec_exporter: vLLM answers without per-request speculative-decoding metrics; start it with %s",
            REMEDY,
        )
    elif outcome is Outcome.UNREPORTED:
        say_once(
            ("unreported",),
            logging.INFO,
            "spec_exporter: vLLM reports no per-request speculative-decoding metrics for a request that ends on a "
            "stop string or has several prompts; such requests are counted outcome=unreported",
        )
    elif outcome is Outcome.OTHER_ENDPOINT:
        say_once(
            ("endpoint", path),
            logging.INFO,
            "spec_exporter: %s answers carry no per-request speculative-decoding metrics; its requests are counted "
            "outcome=other_endpoint, their draft tokens are the engine's beyond the tap's",
            path,
        )


def _internal_failure() -> None:
    say_once(
        ("internal",),
        logging.WARNING,
        "spec_exporter: the tap failed on a request and passed it through untouched (counted in "
        'spec_tap_errors_total{stage="internal"}; further failures are only counted)',
    )


def route_path(scope: Scope) -> str:
    """The path vLLM's router matches: without the `--root-path` prefix when the request has it (Starlette's
    get_route_path)."""
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


def _header(headers: Any, name: bytes) -> str | None:
    values = [v.decode("latin-1") for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


class SpecDecodeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: TapMetrics | None = None,
        settings: TapSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        if settings is None:
            settings = _settings_from_environment()
        if metrics is None:
            metrics = default_metrics(settings.max_models, settings)
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self._speculative_read = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._speculative_read and scope.get("type") == "http":
            # On a request, not at lifespan startup: vLLM sets app.state.vllm_config while starting up.
            self._read_speculative_config(scope)
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in INSPECTED_PATHS:
            joined = True
        elif path in OTHER_GENERATING_PATHS:
            joined = False
        else:
            await self.app(scope, receive, send)
            return
        await _Tapped(self, scope, receive, send, path=path, joined=joined).run()

    def _read_speculative_config(self, scope: Scope) -> None:
        """Once, from the first request's app (vLLM's config is fixed for the server's life); never raises."""
        self._speculative_read = True
        try:
            self.metrics.speculative_config(from_asgi_scope(scope))
        except Exception:
            try:
                self.metrics.error(ErrorStage.INTERNAL)
            except Exception:  # counting the failure must not become one
                pass


# A body at least this large is parsed in a loop iteration of its own, apart from vLLM's parse of the same body:
# the event loop's longest stall is then the longer of the two parses, never their sum.
_OWN_ITERATION_BYTES = 256 * 1024
_BEHIND_DUE_WORK = 1e-4


class _Tapped:
    """One inspected request through the middleware."""

    def __init__(
        self, mw: SpecDecodeMiddleware, scope: Scope, receive: Receive, send: Send, *, path: str, joined: bool
    ) -> None:
        self._mw = mw
        self._scope = scope
        self._receive = receive
        self._send = send
        self._path = path
        self._joined = joined
        self._exchange: Exchange | None = None
        self._pending: deque[Message] = deque()
        self._receive_error: Exception | None = None
        self._disconnected = False
        self._started = False
        self._complete = False
        # The response head, held while the exchange holds an error answer whose body (and length) may change.
        self._held_start: Message | None = None
        # Set when our own response handling failed: from then on every message goes out as the app sent it.
        self._raw = False

    async def run(self) -> None:
        scope = await self._prepare()
        try:
            await self._mw.app(scope, self._app_receive, self._app_send)
        except asyncio.CancelledError:
            # The server cancels the request when its client goes away.
            if not self._complete:
                self._disconnected = True
                self._end_early()
            raise
        except BaseException:
            if not self._complete:
                self._end_early()
            if self._held_start is not None:
                # The app failed after starting an answer we held: the server must see it started, as it would
                # have without us (it then drops the connection rather than answering 500).
                start, self._held_start = self._held_start, None
                with contextlib.suppress(Exception):
                    await self._send(start)
            raise
        if not self._complete:
            self._end_early()

    def _end_early(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        if self._disconnected:
            exchange.client_gone()
        else:
            exchange.upstream_failed()

    async def _prepare(self) -> Scope:
        """Read the body ahead (bounded) and decide what the app receives. Messages read are always replayed."""
        scope = self._scope
        try:
            exchange = Exchange(
                self._mw.metrics,
                self._mw.settings,
                clock=self._mw._clock,
                server_may_encode=False,
                joined=self._joined,
                **_workload_hints(self._mw.settings, scope),
            )
        except Exception:
            self._internal_error()
            return scope
        limit = self._mw.settings.max_inspect_bytes
        body = bytearray()
        complete = False
        while True:
            try:
                message = await self._receive()
            except Exception as e:
                # The app gets the same failure when it reads this far; reading ahead must not change that.
                self._receive_error = e
                break
            self._pending.append(message)
            if message.get("type") != "http.request":
                if message.get("type") == "http.disconnect":
                    self._disconnected = True
                break
            body += message.get("body", b"")
            if len(body) > limit:
                break
            if not message.get("more_body", False):
                complete = True
                break
        self._exchange = exchange
        try:
            headers = scope.get("headers", [])
            forward = exchange.request(
                bytes(body) if complete else None, content_encoding=_header(headers, b"content-encoding")
            )
            if complete and forward is not None and forward != body:
                rewritten = {**scope, "headers": _with_length(headers, len(forward))}
                self._pending = deque([{"type": "http.request", "body": forward, "more_body": False}])
                scope = rewritten
        except Exception:
            # The app gets the messages as they came, and the client what the app sends (the exchange may think
            # it injected).
            exchange.fail()
            _internal_failure()
            self._raw = True
        if len(body) >= _OWN_ITERATION_BYTES:
            # A timer, not sleep(0): sleep(0) resumes ahead of the timers and I/O that came due during our parse
            # (the next step of every stream waiting on them), so vLLM's parse would follow ours with nothing in
            # between; a timer resumes behind them.
            await asyncio.sleep(_BEHIND_DUE_WORK)
        return scope

    def _internal_error(self) -> None:
        try:
            self._mw.metrics.error(ErrorStage.INTERNAL)
            _internal_failure()
        except Exception:  # counting the failure must not become one
            pass

    async def _app_receive(self) -> Message:
        if self._pending:
            return self._pending.popleft()
        if self._receive_error is not None:
            error, self._receive_error = self._receive_error, None
            raise error
        message = await self._receive()
        if message.get("type") == "http.disconnect":
            self._disconnected = True
        return message

    async def _app_send(self, message: Message) -> None:
        out: Message | None = message
        exchange = self._exchange
        if self._raw:
            out = self._end_raw(message)
        elif (
            exchange is not None
            and self._started
            and not self._complete
            and self._held_start is None
            and message.get("type") == "http.response.body"
            and message.get("more_body", False)
        ):
            # The per-chunk path of a stream, kept short: it runs once per token.
            body = message.get("body", b"")
            try:
                sent = exchange.response_body(body)
            except Exception:
                exchange.fail()
                sent = body
            if sent is not body:
                if not sent:
                    return
                out = {**message, "body": sent}
        elif exchange is not None:
            try:
                out = self._rewrite(exchange, message)
            except Exception:
                # Counted once; the rest passes raw, so the failure is neither counted per message nor, for want
                # of a completed response, folded as vLLM's error.
                exchange.fail()
                _internal_failure()
                self._raw = True
                out = self._end_raw(message)
        if out is None:
            return
        try:
            if self._held_start is not None and out.get("type") == "http.response.body":
                start, self._held_start = self._held_start, None
                if not out.get("more_body", False):
                    start = {**start, "headers": _with_length(start.get("headers", []), len(out.get("body", b"")))}
                await self._send(start)
            await self._send(out)
        except BaseException:
            if exchange is not None and not self._complete:
                self._complete = True
                exchange.client_gone()
            raise

    def _end_raw(self, message: Message) -> Message:
        """Fold the failed exchange when the response it gave up on completes; the message to send."""
        exchange = self._exchange
        if (
            exchange is not None
            and not self._complete
            and message.get("type") == "http.response.body"
            and not message.get("more_body", False)
        ):
            self._complete = True
            try:
                if self._disconnected:
                    exchange.client_gone()
                # A failed exchange holds nothing back but an error answer's bytes, returned as they came.
                held = exchange.response_end()
                if held:
                    return {**message, "body": held + message.get("body", b"")}
            except Exception:
                pass
        return message

    def _rewrite(self, exchange: Exchange, message: Message) -> Message | None:
        """The message to send in place of this one; None to send nothing (a chunk wholly withheld)."""
        kind = message.get("type")
        if kind == "http.response.start" and not self._started:
            self._started = True
            headers = message.get("headers", [])
            drop_length = exchange.response_start(
                int(message["status"]),
                content_type=_header(headers, b"content-type"),
                content_encoding=_header(headers, b"content-encoding"),
                content_length=_header(headers, b"content-length") is not None,
            )
            if drop_length:
                message = {**message, "headers": [(k, v) for k, v in headers if k.lower() != b"content-length"]}
            if exchange.holds_error:
                self._held_start = message
                return None
            return message
        if kind == "http.response.body" and self._started and not self._complete:
            body = message.get("body", b"")
            more = message.get("more_body", False)
            out = exchange.response_body(body)
            if not more:
                self._complete = True
                if self._disconnected:
                    # The client left before its request was complete: whatever vLLM answered (a 400 for the
                    # body cut short), nobody read it.
                    exchange.client_gone()
                out += exchange.response_end()
                _note_outcome(exchange, self._path)
            if out is body or out == body:
                return message
            if not out and more:
                return None
            return {**message, "body": out}
        return message


def _workload_hints(settings: TapSettings, scope: Scope) -> dict[str, str | None]:
    """The request's class header value and route prefix (vLLM's --root-path, or a gateway's stripped prefix),
    for the sources the settings name."""
    source = settings.workload_source
    headers = scope.get("headers", [])
    name = source.header_bytes
    route = None
    if source.from_route:
        route = route_prefix(scope.get("root_path"), _header(headers, FORWARDED_PREFIX.encode()))
    return {"workload_header": _header(headers, name) if name else None, "workload_route": route}


def _with_length(headers: Any, length: int) -> list[tuple[bytes, bytes]]:
    """The request headers with Content-Length matching the body the app now receives."""
    return [(k, str(length).encode() if k.lower() == b"content-length" else v) for k, v in headers]


__all__ = ["SpecDecodeMiddleware", "default_metrics"]
