"""The tap's HTTP side: forward every request to vLLM and every response back, byte for byte, reading the
completion requests on the way. Anything the tap fails to understand is counted and passed through untouched;
the tap must never be the reason a request fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from spec_exporter.tap.inspect import (
    INSPECTED_PATHS,
    NotUnderstood,
    RequestView,
    SpecResult,
    parse_json,
    read_request,
    spec_result,
)
from spec_exporter.tap.recorder import REMEDY, ErrorStage, Outcome, TapRecorder
from spec_exporter.tap.sse import UsageChunkFilter

log = structlog.get_logger("spec_exporter.tap")

# RFC 9110 §7.6.1: connection-specific headers a proxy must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_CHUNK = 1 << 16


def forwardable(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    listed = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    skip = HOP_BY_HOP | listed | drop
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


def _bad_gateway(message: str) -> web.Response:
    body = {"object": "error", "message": message, "type": "BadGatewayError", "param": None, "code": 502}
    return web.json_response(body, status=502)


class TapProxy:
    def __init__(
        self,
        upstream: str,
        session: aiohttp.ClientSession,
        recorder: TapRecorder,
        *,
        inject_usage: bool = True,
        max_inspect_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float],
    ) -> None:
        self._upstream = upstream.rstrip("/")
        self._session = session
        self._recorder = recorder
        self._inject_usage = inject_usage
        self._max_inspect = max_inspect_bytes
        self._clock = clock
        self._remedy_logged = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = self._clock()
        inspected = request.method == "POST" and request.path in INSPECTED_PATHS
        view: RequestView | None = None
        band = "unknown"
        data: bytes | AsyncIterator[bytes] | None = None
        if inspected:
            head, complete = await self._read_head(request)
            if complete:
                try:
                    view = read_request(head, self._recorder.bands, self._inject_usage)
                    band = view.temperature_band
                    data = view.upstream_body
                except NotUnderstood as e:
                    self._recorder.error(ErrorStage.REQUEST)
                    log.info("tap request not understood", path=request.path, reason=str(e))
                    data = head
                except Exception as e:  # a bug of ours: forward the original bytes all the same
                    self._recorder.error(ErrorStage.INTERNAL)
                    log.exception("tap request inspection crashed", error=type(e).__name__)
                    data = head
            else:
                self._recorder.error(ErrorStage.REQUEST)
                log.info("tap request too large to inspect", path=request.path, limit_bytes=self._max_inspect)
                data = self._rest_after(head, request)
        elif request.body_exists:
            data = self._rest_after(b"", request)
        # A body we hold (possibly rewritten) gets its own length; a streamed one keeps the client's framing.
        drop = {"host", "content-length"} if isinstance(data, bytes) else {"host"}
        headers = forwardable(request.headers, drop=frozenset(drop))
        url = self._upstream + request.rel_url.raw_path_qs
        try:
            upstream_cm = self._session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
            upstream = await upstream_cm.__aenter__()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            if inspected:
                self._recorder.count(band, Outcome.UPSTREAM_ERROR)
            log.warning("tap upstream unreachable", error=type(e).__name__)
            return _bad_gateway(f"spec_exporter tap: upstream unreachable ({type(e).__name__})")
        try:
            return await self._relay(request, upstream, view, band, inspected, started)
        finally:
            await upstream_cm.__aexit__(None, None, None)

    async def _read_head(self, request: web.Request) -> tuple[bytes, bool]:
        """Up to `max_inspect_bytes` of the body; complete=False if there is more (then it is not inspected)."""
        if request.content_length is not None and request.content_length > self._max_inspect:
            return b"", False
        chunks = bytearray()
        while True:
            chunk = await request.content.read(_CHUNK)
            if not chunk:
                return bytes(chunks), True
            chunks += chunk
            if len(chunks) > self._max_inspect:
                return bytes(chunks), False

    @staticmethod
    async def _rest_after(head: bytes, request: web.Request) -> AsyncIterator[bytes]:
        if head:
            yield head
        async for chunk in request.content.iter_chunked(_CHUNK):
            yield chunk

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        view: RequestView | None,
        band: str,
        inspected: bool,
        started: float,
    ) -> web.StreamResponse:
        ok = upstream.status == 200
        is_sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        encoded = "Content-Encoding" in upstream.headers
        watching = view is not None and ok and not encoded
        sse = UsageChunkFilter(strip_usage=view.injected_usage) if watching and is_sse and view else None
        copy: bytearray | None = bytearray() if watching and not is_sse else None
        # Withholding the usage chunk changes the length: let aiohttp frame the body itself then.
        drop = frozenset({"content-length"}) if sse is not None and sse.strip_usage else frozenset()
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=forwardable(upstream.headers, drop=drop)
        )
        first_event_at = last_event_at = None
        try:
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    out = chunk
                    if sse is not None:
                        try:
                            seen = sse.data_events
                            out = sse.feed(chunk)
                            if sse.data_events > seen:
                                last_event_at = self._clock()
                                first_event_at = first_event_at or last_event_at
                        except Exception as e:
                            out, sse = self._give_up_on_stream(sse, chunk, e), None
                    elif copy is not None:
                        copy += chunk
                        if len(copy) > self._max_inspect:
                            copy = None
                    if out:
                        await response.write(out)
                if sse is not None:
                    rest = sse.finish()
                    if rest:
                        await response.write(rest)
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
                # vLLM went away mid-body: end the client's connection the same abrupt way.
                if inspected:
                    self._recorder.count(band, Outcome.UPSTREAM_ERROR)
                log.warning("tap upstream failed mid-response", error=type(e).__name__)
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            # The client went away: drop the upstream connection so vLLM aborts the request.
            upstream.close()
            if inspected:
                self._recorder.count(band, Outcome.CLIENT_DISCONNECTED)
            raise
        if inspected:
            self._record(view, band, upstream.status, sse, copy, started, first_event_at, last_event_at)
        return response

    def _give_up_on_stream(self, sse: UsageChunkFilter, chunk: bytes, error: Exception) -> bytes:
        # Fail open: whatever the filter held back plus this chunk goes out, and the rest passes raw.
        self._recorder.error(ErrorStage.RESPONSE if isinstance(error, NotUnderstood) else ErrorStage.INTERNAL)
        log.warning("tap stream not understood; passing it through", error=type(error).__name__)
        # feed() raised before returning this chunk; whether it already sits in the held bytes depends on where.
        held = sse.held()
        return held if held.endswith(chunk) else held + chunk

    def _record(
        self,
        view: RequestView | None,
        band: str,
        status: int,
        sse: UsageChunkFilter | None,
        copy: bytearray | None,
        started: float,
        first_event_at: float | None,
        last_event_at: float | None,
    ) -> None:
        recorder = self._recorder
        if view is None:
            recorder.count(band, Outcome.NOT_UNDERSTOOD)
            return
        if status != 200:
            recorder.count(band, Outcome.UPSTREAM_ERROR)
            return
        try:
            if sse is not None:
                result = spec_result(sse.usage) if sse.usage is not None else None
            elif copy is not None:
                result = spec_result(parse_json(bytes(copy)))
            else:
                result = None
        except NotUnderstood as e:
            recorder.error(ErrorStage.RESPONSE)
            log.info("tap response not understood", reason=str(e))
            result = None
        except Exception as e:
            recorder.error(ErrorStage.INTERNAL)
            log.exception("tap response inspection crashed", error=type(e).__name__)
            result = None
        model = (result.model if result is not None else None) or view.model
        ttft, tpot = _latency(result, started, first_event_at, last_event_at)
        if result is None or result.accepted is None or result.drafted is None:
            recorder.latency(model, band, ttft, tpot)
            recorder.count(band, Outcome.NO_SPEC_METRICS)
            if result is not None and view.n == 1:
                self._spec_metrics_missing()
            return
        recorder.missing_spec_metrics = False
        recorder.measured(model, band, result.accepted, result.drafted, ttft, tpot)

    def _spec_metrics_missing(self) -> None:
        self._recorder.missing_spec_metrics = True
        if not self._remedy_logged:
            self._remedy_logged = True
            log.warning("vLLM returns no per-request speculative-decoding metrics", remedy=f"start vLLM with {REMEDY}")


def _latency(
    result: SpecResult | None, started: float, first_event_at: float | None, last_event_at: float | None
) -> tuple[float | None, float | None]:
    """Per-request TTFT and TPOT: vLLM's own numbers when the response has them, else measured here."""
    ttft = result.ttft_seconds if result is not None else None
    tpot = result.tpot_seconds if result is not None else None
    if ttft is None and first_event_at is not None:
        ttft = first_event_at - started
    tokens = result.completion_tokens if result is not None else None
    if tpot is None and first_event_at is not None and last_event_at is not None and tokens and tokens > 1:
        tpot = (last_event_at - first_event_at) / (tokens - 1)
    return ttft, tpot


def create_tap_app(
    upstream: str,
    recorder: TapRecorder,
    *,
    inject_usage: bool = True,
    max_inspect_bytes: int = 8 * 1024 * 1024,
    clock: Callable[[], float],
    session_factory: Callable[[], aiohttp.ClientSession] | None = None,
) -> web.Application:
    app = web.Application(client_max_size=0)
    holder: dict[str, Any] = {}

    def default_session() -> aiohttp.ClientSession:
        # No pool limit: the tap must never queue a request vLLM itself would have taken.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def session_ctx(_: web.Application) -> AsyncIterator[None]:
        async with (session_factory or default_session)() as session:
            holder["proxy"] = TapProxy(
                upstream, session, recorder, inject_usage=inject_usage, max_inspect_bytes=max_inspect_bytes, clock=clock
            )
            yield

    app.cleanup_ctx.append(session_ctx)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await holder["proxy"].handle(request)

    app.router.add_route("*", "/{tail:.*}", handle)
    return app


__all__ = ["TapProxy", "create_tap_app", "forwardable", "json"]
