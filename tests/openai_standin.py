"""A stand-in vLLM OpenAI server for the tap's tests: it replays the real captured responses in
tests/fixtures/vllm-responses byte for byte, choosing by the request the way vLLM would (stream or not,
include_usage or not, n), and streams SSE events one by one at a cadence the test sets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

_TEMPERATURE = TypeAdapter(float | None)

RESPONSES = Path(__file__).parent / "fixtures" / "vllm-responses"


def response(name: str) -> bytes:
    return (RESPONSES / name).read_bytes()


def sse_events(body: bytes) -> list[bytes]:
    """The events of an SSE body, each with its blank-line terminator."""
    return [part + b"\n\n" for part in body.split(b"\n\n") if part]


def without_usage_chunk(body: bytes) -> bytes:
    """A usage-carrying stream as the client would have seen it without include_usage."""
    return b"".join(e for e in sse_events(body) if b'"choices":[]' not in e)


def usage_chunk(body: bytes) -> dict[str, Any]:
    (event,) = [e for e in sse_events(body) if b'"choices":[]' in e]
    return json.loads(event.removeprefix(b"data: "))


@dataclass
class OpenAIStandIn:
    chat_json: bytes = field(default_factory=lambda: response("chat_nonstream_t0.7.json"))
    completion_json: bytes = field(default_factory=lambda: response("completion_nonstream_t1.0.json"))
    n2_json: bytes = field(default_factory=lambda: response("completion_n2.json"))
    stream_usage: bytes = field(default_factory=lambda: response("chat_stream_usage_t0.4.sse"))
    stream_no_usage: bytes = field(default_factory=lambda: response("chat_stream_nousage_t0.4.sse"))
    event_delay: float = 0.0
    # Scripted misbehaviour: status override, reset after k events, hang before the first event.
    status: int | None = None
    reset_after_events: int | None = None
    hang_after_events: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.bodies.append(raw)
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "invalid JSON body")
        self.requests.append({"path": request.path, "body": body, "headers": dict(request.headers)})
        if self.status is not None:
            return _error(self.status, "scripted failure")
        # vLLM reads the field with pydantic in lax mode, then SamplingParams wants a finite value in [0, 2].
        try:
            temperature = _TEMPERATURE.validate_python(body.get("temperature"))
        except ValidationError:
            return _error(400, "temperature: Input should be a valid number")
        if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 2):
            return _error(400, f"temperature must be in [0, 2], got {temperature}.")
        if body.get("stream"):
            options = body.get("stream_options") or {}
            return await self._stream(
                request, self.stream_usage if options.get("include_usage") else self.stream_no_usage
            )
        if body.get("n", 1) > 1:
            payload = self.n2_json
        else:
            payload = self.chat_json if request.path.endswith("chat/completions") else self.completion_json
        return web.Response(body=payload, content_type="application/json")

    async def _stream(self, request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        try:
            for i, event in enumerate(sse_events(body)):
                if self.reset_after_events is not None and i == self.reset_after_events:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if self.hang_after_events is not None and i == self.hang_after_events:
                    await asyncio.Event().wait()
                if self.event_delay:
                    await asyncio.sleep(self.event_delay)
                await response.write(event)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            # The tap closed our connection: exactly what makes vLLM abort the request.
            self.disconnected.set()
            raise
        return response

    async def echo(self, request: web.Request) -> web.Response:
        raw = await request.read()
        digest = hashlib.sha256(raw).hexdigest()
        return web.json_response(
            {
                "bytes": len(raw),
                "sha256": digest,
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": dict(request.headers),
            }
        )

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "tiny", "object": "model"}]}, headers={"X-Upstream": "vllm"}
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_route("*", "/echo", self.echo)
        return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}, status=status
    )
