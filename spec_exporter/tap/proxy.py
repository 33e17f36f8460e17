"""The proxy tap: a pass-through HTTP proxy in front of vLLM, for a vLLM whose command line cannot take the
middleware. A thin front end on the tap's Exchange, folding into the `spec_tap_*` families of a TapMetrics
on a registry the exporter owns.

It forwards exactly what it received and returns exactly what vLLM sent, the documented usage injection aside:
- the request target byte for byte (`raw_path`: no dot-segment removal, no re-quoting);
- request bodies as received: the server must run with `auto_decompress=False` (`SERVER_OPTIONS`), or aiohttp
  would hand over a decompressed body still labelled Content-Encoding;
- header values byte for byte in both directions, including bytes that are not UTF-8 (see `_keep_header_bytes`);
  no Content-Type or Server of its own on a response that had none (Date is added if missing, as RFC 9110 §6.6.1
  asks of a forwarding recipient).
Usage is injected only for a client that accepts no content coding but identity: a compressed stream cannot be
filtered, so it must not have been asked for usage in the first place.

Judgement calls, each as a normal HTTP server would:
- a client that half-closes its connection after the request counts as gone (client_disconnected): the request
  is cancelled, so vLLM generates nothing for it. vLLM's own uvicorn closes a half-closed connection the same
  way, as nginx reports one as a client abort (499); HTTP/1.1 clients do not half-close in practice;
- `OPTIONS *` is answered 404 by the tap itself: there is no resource to forward it to, and vLLM's own server
  answers it 404 as well;
- a target in absolute form (`GET http://host/path HTTP/1.1`, RFC 9112 §3.2.2) is served as vLLM's uvicorn serves
  it: its path and query, byte for byte, go upstream in origin form;
- request lines up to 64 KiB, header fields up to 64 KiB and up to 512 header fields are accepted (more than
  vLLM's uvicorn needs in practice); beyond, 400, never a hang.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

import aiohttp
import aiohttp.http_writer
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from spec_exporter.tap.exchange import Exchange
from spec_exporter.tap.metrics import REMEDY, Outcome, TapMetrics
from spec_exporter.tap.request import INSPECTED_PATHS, OTHER_GENERATING_PATHS
from spec_exporter.tap.settings import TapSettings
from spec_exporter.tap.workload import FORWARDED_PREFIX, route_prefix

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

# Options for the aiohttp server that runs the tap app (AppRunner / TestServer keyword arguments).
SERVER_OPTIONS: dict[str, Any] = {
    "auto_decompress": False,
    # A client that goes away cancels its handler, which closes the upstream connection, which makes vLLM abort
    # the request instead of generating for nobody.
    "handler_cancellation": True,
    "max_line_size": 65536,
    "max_field_size": 65536,
    "max_headers": 512,
}


def _keep_header_bytes() -> None:
    """Make aiohttp write header values back as the bytes it read them from.

    aiohttp's parsers decode header bytes that are not UTF-8 with `surrogateescape`, but its serializer (the C one
    cuts the value at the first such character; the Python one raises) cannot write them back. Values that are
    plain ASCII, nearly all of them, still take the C serializer.
    """
    current = aiohttp.http_writer._serialize_headers
    if getattr(current, "_keeps_bytes", False):
        return
    safe = aiohttp.http_writer._safe_header

    def serialize(status_line: str, headers: CIMultiDict[str]) -> bytes:
        if status_line.isascii() and all(k.isascii() and v.isascii() for k, v in headers.items()):
            return current(status_line, headers)
        lines = "\r\n".join(safe(k) + ": " + safe(v) for k, v in headers.items())
        return (safe(status_line) + "\r\n" + lines + "\r\n\r\n").encode("utf-8", "surrogateescape")

    serialize._keeps_bytes = True  # type: ignore[attr-defined]
    aiohttp.http_writer._serialize_headers = serialize


def forwardable(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    listed = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    skip = HOP_BY_HOP | listed | drop
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


def _joined(headers: CIMultiDictProxy[str], name: str) -> str | None:
    values = headers.getall(name, [])
    return ", ".join(values) if values else None


def workload_hints(settings: TapSettings, headers: CIMultiDictProxy[str]) -> dict[str, str | None]:
    """The request's class header value and route prefix, for the sources the settings name."""
    source = settings.workload_source
    return {
        "workload_header": _joined(headers, source.header) if source.header else None,
        "workload_route": route_prefix(_joined(headers, FORWARDED_PREFIX)) if source.from_route else None,
    }


class _RelayedResponse(web.StreamResponse):
    """A StreamResponse that adds no Content-Type or Server header the upstream response did not have."""

    def __init__(self, *, upstream_headers: CIMultiDictProxy[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._absent = [h for h in ("Content-Type", "Server") if h not in upstream_headers]

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        for name in self._absent:
            self.headers.popall(name, None)


def _bad_gateway(message: str) -> web.Response:
    body = {"object": "error", "message": message, "type": "BadGatewayError", "param": None, "code": 502}
    return web.json_response(body, status=502)


class TapProxy:
    def __init__(
        self,
        upstream: str,
        session: aiohttp.ClientSession,
        metrics: TapMetrics,
        settings: TapSettings,
        *,
        clock: Callable[[], float],
    ) -> None:
        self._upstream = upstream.rstrip("/")
        self._session = session
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._remedy_logged = False

    def _note(self, exchange: Exchange) -> None:
        if exchange.outcome is Outcome.NO_SPEC_METRICS and not self._remedy_logged:
            self._remedy_logged = True
            log.warning("vLLM returns no per-request speculative-decoding metrics", remedy=f"start vLLM with {REMEDY}")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = _origin_form(request.raw_path)
        # Route as vLLM's uvicorn will: on the percent-decoded path.
        path = unquote(target.partition("?")[0])
        exchange = None
        if request.method == "POST" and (path in INSPECTED_PATHS or path in OTHER_GENERATING_PATHS):
            exchange = Exchange(
                self._metrics,
                self._settings,
                clock=self._clock,
                server_may_encode=True,
                joined=path in INSPECTED_PATHS,
                **workload_hints(self._settings, request.headers),
            )
        try:
            return await self._forward(request, target, exchange)
        except (ConnectionResetError, asyncio.CancelledError):
            # The client went away (before or while its answer was relayed).
            if exchange is not None:
                exchange.client_gone()
            raise

    async def _forward(self, request: web.Request, target: str, exchange: Exchange | None) -> web.StreamResponse:
        data: bytes | AsyncIterator[bytes] | None = None
        if exchange is not None:
            head, complete = await self._read_head(request)
            forwarded = exchange.request(
                head if complete else None,
                accept_encoding=_joined(request.headers, "Accept-Encoding"),
                content_encoding=_joined(request.headers, "Content-Encoding"),
            )
            data = forwarded if complete and forwarded is not None else self._rest_after(head, request)
        elif request.body_exists:
            data = self._rest_after(b"", request)
        # A body we hold (possibly rewritten) gets its own length; a streamed one keeps the client's framing.
        drop = {"host", "content-length"} if isinstance(data, bytes) else {"host"}
        headers = forwardable(request.headers, drop=frozenset(drop))
        try:
            upstream_cm = self._session.request(
                request.method,
                URL(self._upstream + target, encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
            upstream = await upstream_cm.__aenter__()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            if exchange is not None:
                exchange.upstream_failed()
            log.warning("tap upstream unreachable", error=type(e).__name__)
            return _bad_gateway(f"spec_exporter tap: upstream unreachable ({type(e).__name__})")
        try:
            return await self._relay(request, upstream, exchange)
        finally:
            await upstream_cm.__aexit__(None, None, None)

    async def _read_head(self, request: web.Request) -> tuple[bytes, bool]:
        """Up to `max_inspect_bytes` of the body; complete=False if there is more (then it is not inspected)."""
        limit = self._settings.max_inspect_bytes
        if request.content_length is not None and request.content_length > limit:
            return b"", False
        chunks = bytearray()
        while True:
            chunk = await request.content.read(_CHUNK)
            if not chunk:
                return bytes(chunks), True
            chunks += chunk
            if len(chunks) > limit:
                return bytes(chunks), False

    @staticmethod
    async def _rest_after(head: bytes, request: web.Request) -> AsyncIterator[bytes]:
        if head:
            yield head
        async for chunk in request.content.iter_chunked(_CHUNK):
            yield chunk

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, exchange: Exchange | None
    ) -> web.StreamResponse:
        drop: frozenset[str] = frozenset()
        if exchange is not None and exchange.response_start(
            upstream.status,
            content_type=_joined(upstream.headers, "Content-Type"),
            content_encoding=_joined(upstream.headers, "Content-Encoding"),
            content_length="Content-Length" in upstream.headers,
        ):
            # Withholding the usage chunk changes the length: let aiohttp frame the body itself then.
            drop = frozenset({"content-length"})
        if exchange is not None and exchange.holds_error:
            return await self._relay_error(request, upstream, exchange)
        response = _RelayedResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=forwardable(upstream.headers, drop=drop),
            upstream_headers=upstream.headers,
        )
        try:
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    out = exchange.response_body(chunk) if exchange is not None else chunk
                    if out:
                        await response.write(out)
                if exchange is not None:
                    rest = exchange.response_end()
                    self._note(exchange)
                    if rest:
                        await response.write(rest)
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
                # vLLM went away mid-body: end the client's connection the same abrupt way.
                if exchange is not None:
                    exchange.upstream_failed()
                log.warning("tap upstream failed mid-response", error=type(e).__name__)
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            # The client went away: drop the upstream connection so vLLM aborts the request.
            upstream.close()
            raise
        return response

    async def _relay_error(
        self, request: web.Request, upstream: aiohttp.ClientResponse, exchange: Exchange
    ) -> web.StreamResponse:
        """An error answer to a request the tap injected into: read whole (vLLM's are small), the injection taken
        out of its echo of the request, relayed with its length corrected."""
        try:
            body = exchange.response_body(await upstream.read())
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
            exchange.upstream_failed()
            log.warning("tap upstream failed mid-response", error=type(e).__name__)
            if request.transport is not None:
                request.transport.abort()
            return web.StreamResponse(status=upstream.status)
        body += exchange.response_end()
        headers = forwardable(upstream.headers)
        if "Content-Length" in headers:
            headers["Content-Length"] = str(len(body))
        response = _RelayedResponse(
            status=upstream.status, reason=upstream.reason, headers=headers, upstream_headers=upstream.headers
        )
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response


_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def _origin_form(raw_target: str) -> str:
    """The request target as an origin-form path and query; an absolute-form target loses its scheme and
    authority (nothing else: the bytes of its path and query are kept)."""
    if raw_target.startswith("/"):
        return raw_target
    match = _ABSOLUTE_FORM.match(raw_target)
    if match is None:
        return raw_target
    rest = raw_target[match.end() :]
    return rest if rest.startswith("/") else "/" + rest


def create_tap_app(
    upstream: str,
    metrics: TapMetrics,
    settings: TapSettings | None = None,
    *,
    clock: Callable[[], float],
    session_factory: Callable[[], aiohttp.ClientSession] | None = None,
) -> web.Application:
    """The tap as an aiohttp app; run it with `SERVER_OPTIONS` (see `tap_runner`)."""
    _keep_header_bytes()
    app = web.Application(client_max_size=0)
    holder: dict[str, TapProxy] = {}
    tap_settings = settings or TapSettings()

    def default_session() -> aiohttp.ClientSession:
        # No pool limit: the tap must never queue a request vLLM itself would have taken.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def session_ctx(_: web.Application) -> AsyncIterator[None]:
        async with (session_factory or default_session)() as session:
            holder["proxy"] = TapProxy(upstream, session, metrics, tap_settings, clock=clock)
            yield

    app.cleanup_ctx.append(session_ctx)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await holder["proxy"].handle(request)

    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def tap_runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, **SERVER_OPTIONS)


__all__ = ["SERVER_OPTIONS", "TapProxy", "create_tap_app", "forwardable", "tap_runner"]
