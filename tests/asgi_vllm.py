"""The vLLM stand-in as a raw ASGI app (answering like vLLM's FastAPI server: Starlette's StreamingResponse for
streams, JSONResponse otherwise), and a raw ASGI client to drive an app (or the middleware around it) with."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.vllm_answers import VLLMStandIn

Message = dict[str, Any]


@dataclass
class VLLMApp:
    standin: VLLMStandIn = field(default_factory=VLLMStandIn)
    # How the answer's bytes are cut into body messages (default: one per SSE event, as vLLM writes them).
    split: Callable[[bytes], list[bytes]] | None = None
    scopes: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False
    raise_after: int | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.scopes.append(scope)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        path = scope["path"]
        if scope.get("root_path") and path.startswith(scope["root_path"] + "/"):
            path = path[len(scope["root_path"]) :]  # routed as Starlette routes behind --root-path
        if scope["method"] != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-upstream", b"vllm")]})
            await send({"type": "http.response.body", "body": b'{"object":"list"}'})
            return
        answer = self.standin.answer(path, bytes(body))
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        chunks = self.split(b"".join(answer.chunks)) if self.split else answer.chunks
        if not dict(answer.headers).get("content-type", "").startswith("text/event-stream"):
            for i, chunk in enumerate(chunks):
                await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
            return
        await self._stream(chunks, receive, send)

    async def _stream(self, chunks: list[bytes], receive: Any, send: Any) -> None:
        # Starlette's StreamingResponse: stream, and stop (returning normally) when the client disconnects.
        async def stream() -> None:
            for i, chunk in enumerate(chunks):
                if self.raise_after is not None and i == self.raise_after:
                    raise RuntimeError("vLLM failed mid-stream")
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        streaming = asyncio.ensure_future(stream())
        listening = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait({streaming, listening}, return_when=asyncio.FIRST_COMPLETED)
        if streaming in done:
            listening.cancel()
            streaming.result()
            return
        streaming.cancel()
        self.cancelled = True


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    messages: list[Message]

    def header(self, name: str) -> str | None:
        values = [v.decode("latin-1") for k, v in self.headers if k.decode("latin-1").lower() == name]
        return values[0] if values else None


async def call(
    app: Any,
    path: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    body_pieces: int | None = None,
    disconnect_after: int | None = None,
    root_path: str = "",
) -> Response:
    """One request through an ASGI app, as uvicorn would deliver it; disconnect after that many body messages."""
    if headers is None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    size = body_pieces or max(len(body), 1)
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    incoming: deque[Message] = deque(
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)
    )
    gone = asyncio.Event()
    sent: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.popleft()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if gone.is_set():
            return  # uvicorn drops what is sent after the client went away
        sent.append(message)
        bodies = sum(1 for m in sent if m["type"] == "http.response.body")
        if disconnect_after is not None and bodies >= disconnect_after:
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Response(start["status"], list(start.get("headers", [])), body_out, sent)
