"""A stand-in vLLM OpenAI server (aiohttp) for the proxy tap's tests: it answers like vLLM 0.32 from the real
captured responses (tests/vllm_answers.py: lax request reading, the usage chunk and fingerprint rules), streams
SSE events one by one at a cadence the test sets, and can misbehave on cue."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.vllm_answers import CHAT_JSON, COMPLETION_JSON, N2_JSON, VLLMStandIn

RESPONSES = Path(__file__).parent / "fixtures" / "vllm-responses"


def response(name: str) -> bytes:
    return (RESPONSES / name).read_bytes()


def sse_events(body: bytes) -> list[bytes]:
    """The events of an SSE body, each with its blank-line terminator."""
    return [part + b"\n\n" for part in body.split(b"\n\n") if part]


@dataclass
class OpenAIStandIn:
    chat_json: bytes = field(default_factory=lambda: response("chat_nonstream_t0.7.json"))
    completion_json: bytes = field(default_factory=lambda: response("completion_nonstream_t1.0.json"))
    n2_json: bytes = field(default_factory=lambda: response("completion_n2.json"))
    vllm: VLLMStandIn = field(default_factory=VLLMStandIn)
    event_delay: float = 0.0
    # Scripted misbehaviour: status override, reset after k events, hang before event k, replace the stream.
    status: int | None = None
    reset_after_events: int | None = None
    hang_after_events: int | None = None
    stream_override: list[bytes] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.bodies.append(raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append({"path": request.path, "body": body, "headers": dict(request.headers)})
        if self.status is not None:
            self.vllm.status = self.status
        answer = self.vllm.answer(request.path, raw)
        headers = dict(answer.headers)
        if headers["content-type"].startswith("text/event-stream"):
            return await self._stream(request, self.stream_override or answer.chunks)
        payload = b"".join(answer.chunks)
        # The captured answers, replaceable per test; one the stand-in built for the request (a stop string,
        # several prompts) is sent as built.
        captured = {CHAT_JSON: self.chat_json, COMPLETION_JSON: self.completion_json, N2_JSON: self.n2_json}
        payload = captured.get(payload, payload) if answer.status == 200 else payload
        return web.Response(body=payload, status=answer.status, content_type="application/json")

    async def _stream(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        try:
            for i, event in enumerate(events):
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
        return web.json_response(
            {
                "bytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": dict(request.headers),
                "raw_headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
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
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app
