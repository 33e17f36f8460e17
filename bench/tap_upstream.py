"""The servers of `bench.bench_tap` and `bench.bench_scrapes`, each run as its own process:

    python -m bench.tap_upstream upstream --interval-ms 15      # a vLLM-shaped streaming upstream
    python -m bench.tap_upstream tap --upstream http://127.0.0.1:PORT
    python -m bench.tap_upstream serve --target http://127.0.0.1:PORT --listen 127.0.0.1:P1 --tap-listen 127.0.0.1:P2

The upstream and the tap listen on 127.0.0.1 at a free port, `serve` at the two addresses it is given; each prints
`READY <port>` on stdout once it accepts connections, and stops on SIGTERM (the tap first prints its recorder's
counts as one JSON line: `RECORDER {...}`).

The upstream streams chat completions the way vLLM 0.32 does (tests/fixtures/vllm-responses/
chat_stream_usage_t0.4.sse): a role chunk at once, then `max_tokens` content chunks, one per decoding step, a
finish chunk, the usage chunk with `"choices":[]` and `metrics.speculative_decoding` when (and only when) the
request asks for `stream_options.include_usage`, and `data: [DONE]`, each event written on its own. Steps are on
a grid shared by all streams (every `interval` on the loop clock), so all running streams get their chunk in the
same loop iteration, as with a batch decoded in one engine step (`lockstep`, the default), or, with the request
header `X-Bench-Pattern: staggered`, on the same grid shifted by a random phase per stream, so chunks of different
streams arrive spread over the step. The chunk `id` is the send time: 16 hex digits
of CLOCK_MONOTONIC nanoseconds (system-wide on Linux, so comparable across processes) taken just before the
write, the same length as vLLM's own `chatcmpl-` + 16 hex digits. A request header `X-Bench-Interval-Ms`
overrides the cadence (0: as fast as the loop can write).

The upstream is also a vLLM's /metrics, for an exporter to poll: `GET /metrics` is the real vLLM 0.32 scrape
(tests/fixtures/vllm/, the same body every time), `GET /metrics/engines/N` the N-engine scrapes generated from it
by `bench.payloads.ScrapeSequence`, the next poll's body at each request (counters growing).

The tap is the real `spec_exporter.tap.proxy.create_tap_app` under `web.AppRunner(access_log=None,
handler_cancellation=True)`, as `spec_exporter.app.serve` runs it, with logging set up as `--log.level warn`.

`serve` is the exporter process as `spec-exporter --target URL --tap.listen-address ADDR --poll.interval 1s
--log.level warn` runs it: `spec_exporter.app.serve` with the exporter and the proxy tap on one event loop. With
`--no-cache`, its /metrics is prometheus_client's stock `make_aiohttp_handler` on the exporter's registry instead,
rendering every scrape on that loop, which is what the exporter did before `ExpositionCache`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web

from bench.payloads import ScrapeSequence, read_scrape

CLOCK = time.CLOCK_MONOTONIC
MAX_TOKENS = 4096
INTERVAL_HEADER = "X-Bench-Interval-Ms"
PATTERN_HEADER = "X-Bench-Pattern"

# Token texts, JSON-encoded once; each content chunk takes the next one.
_WORDS = [
    " the",
    " draft",
    " model",
    " proposes",
    " tokens",
    ",",
    " and",
    " target",
    " verifies",
    " them",
    " in",
    " one",
    " forward",
    " pass",
    ".",
    " Accepted",
    " prefixes",
    " are",
    " kept",
    ";",
    " speculative",
    " decoding",
    " pays",
    " off",
    " when",
    " acceptance",
    " is",
    " high",
    "\n",
    " é",
]
_CONTENT = [b'{"content":' + json.dumps(w).encode() for w in _WORDS]
_ID = b'data: {"id":"chatcmpl-'
_AFTER_ID = b'","object":"chat.completion.chunk","created":%d,"model":"tiny","choices":[{"index":0,"delta":'
_ROLE_TAIL = b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'  # noqa: E501
_TOKEN_TAIL = b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
_FINISH_TAIL = b'{"content":""},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]}\n\n'
_DONE = b"data: [DONE]\n\n"
_EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"


def now_ns() -> int:
    return time.clock_gettime_ns(CLOCK)


def _usage_event(stamp: int, created: int, prompt_tokens: int, tokens: int) -> bytes:
    # Shaped like the fixture's: k=3 drafts per step, about 1.5 tokens per step.
    steps = max(1, math.ceil(tokens / 1.5))
    accepted = max(0, tokens - steps)
    usage = {
        "id": f"chatcmpl-{stamp:016x}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": "tiny",
        "choices": [],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + tokens, "completion_tokens": tokens},
        "system_fingerprint": "vllm-0.32.0-41cc1112",
        "metrics": {
            "time_to_first_token_ms": 11.876276999828406,
            "generation_time_ms": 208.4144150001066,
            "queue_time_ms": 0.02921300006164529,
            "mean_itl_ms": 9.06149630435246,
            "tokens_per_second": 108.9469545086684,
            "speculative_decoding": {
                "mean_acceptance_length": 1 + accepted / steps,
                "draft_acceptance_rate": accepted / (3 * steps),
                "acceptance_histogram": [steps - min(steps, accepted), min(steps, accepted), 0, 0],
                "num_spec_steps": steps,
                "num_accepted_draft_tokens": accepted,
                "num_draft_tokens": 3 * steps,
                "num_spec_tokens": 3,
            },
        },
    }
    return b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n"


class Upstream:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.streams = 0
        self.events = 0
        self.disconnects = 0
        self.scrape = read_scrape().encode()
        self.sequences: dict[int, tuple[ScrapeSequence, list[int]]] = {}
        self.polls = 0

    async def metrics(self, request: web.Request) -> web.Response:
        self.polls += 1
        return web.Response(body=self.scrape, headers={"Content-Type": _EXPOSITION})

    async def engine_metrics(self, request: web.Request) -> web.Response:
        engines = int(request.match_info["engines"])
        if not 1 <= engines <= 64:
            raise web.HTTPNotFound()
        if engines not in self.sequences:
            self.sequences[engines] = (ScrapeSequence(engines), [0])
        sequence, polls = self.sequences[engines]
        body = sequence.scrape(polls[0]).encode()
        polls[0] += 1
        self.polls += 1
        return web.Response(body=body, headers={"Content-Type": _EXPOSITION})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tokens = max(1, min(MAX_TOKENS, int(body.get("max_tokens") or 16)))
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", [])) + 8
        if not body.get("stream"):
            text = "".join(_WORDS[i % len(_WORDS)] for i in range(tokens))
            return web.json_response(
                {
                    "id": f"chatcmpl-{now_ns():016x}",
                    "object": "chat.completion",
                    "model": "tiny",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens},
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        header = request.headers.get(INTERVAL_HEADER)
        interval = float(header) / 1000 if header is not None else self.interval
        phase = random.random() * interval if request.headers.get(PATTERN_HEADER) == "staggered" else 0.0
        created = int(time.time())
        after_id = _AFTER_ID % created
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        self.streams += 1
        loop = asyncio.get_running_loop()
        write = response.write
        try:
            await write(_ID + b"%016x" % now_ns() + after_id + _ROLE_TAIL)
            for i in range(tokens):
                if interval > 0:
                    # The next step on the shared grid: every stream due now wakes in the same loop iteration.
                    now = loop.time() - phase
                    await asyncio.sleep((math.floor(now / interval) + 1) * interval - now)
                else:
                    await asyncio.sleep(0)
                await write(_ID + b"%016x" % now_ns() + after_id + _CONTENT[i % len(_CONTENT)] + _TOKEN_TAIL)
            await write(_ID + b"%016x" % now_ns() + after_id + _FINISH_TAIL)
            if include_usage:
                await write(_usage_event(now_ns(), created, prompt_tokens, tokens))
            await write(_DONE)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        self.events += tokens + 3 + include_usage
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/metrics/engines/{engines:[0-9]+}", self.engine_metrics)
        return app


def _recorder_summary(registry: Any) -> dict[str, Any]:
    """What the tap folded, from its spec_tap_* families (same shape the bench reads)."""
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    series: dict[tuple[str, str], dict[str, Any]] = {}
    for family in registry.collect():
        for s in family.samples:
            labels = s.labels
            if s.name == "spec_tap_requests_total":
                key = f"{labels['temperature_band']}/{labels['outcome']}"
                requests[key] = requests.get(key, 0) + s.value
            elif s.name == "spec_tap_errors_total":
                errors[labels["stage"]] = s.value
            elif s.name in ("spec_tap_accepted_tokens_total", "spec_tap_draft_tokens_total"):
                entry = series.setdefault(
                    (labels["model_name"], labels["temperature_band"]),
                    {"model": labels["model_name"], "band": labels["temperature_band"]},
                )
                entry["accepted" if "accepted" in s.name else "drafted"] = s.value
    return {"requests": requests, "errors": errors, "series": list(series.values())}


async def _serve(app: web.Application, runner_kwargs: dict[str, Any], on_stop: Any = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, **runner_kwargs)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"READY {port}", flush=True)
        await stop.wait()
        if on_stop is not None:
            on_stop()
    finally:
        await runner.cleanup()


def run_upstream(args: argparse.Namespace) -> None:
    upstream = Upstream(args.interval_ms / 1000)

    def report() -> None:
        stats = {
            "streams": upstream.streams,
            "events": upstream.events,
            "disconnects": upstream.disconnects,
            "polls": upstream.polls,
        }
        print("UPSTREAM " + json.dumps(stats), flush=True)

    asyncio.run(_serve(upstream.app(), {"access_log": None}, report))


def run_tap(args: argparse.Namespace) -> None:
    from prometheus_client import CollectorRegistry

    from spec_exporter.logs import setup_logging
    from spec_exporter.tap.metrics import TapMetrics
    from spec_exporter.tap.proxy import SERVER_OPTIONS, create_tap_app

    setup_logging("warn")
    registry = CollectorRegistry()
    app = create_tap_app(args.upstream, TapMetrics(registry), clock=time.monotonic)

    def report() -> None:
        print("RECORDER " + json.dumps(_recorder_summary(registry)), flush=True)

    asyncio.run(_serve(app, {"access_log": None, **SERVER_OPTIONS}, report))


def _stock_metrics() -> Any:
    """A middleware answering the exporter's /metrics as it did before ExpositionCache: prometheus_client's stock
    aiohttp handler on a registry of the same collectors, rendering each scrape on the event loop."""
    from aiohttp.typedefs import Handler
    from prometheus_client.aiohttp import make_aiohttp_handler

    from spec_exporter.app import STORE_KEY, build_registry

    stock: list[Handler] = []

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/metrics" or request.method != "GET":
            return await handler(request)
        if not stock:  # the app's store exists only once the app does
            stock.append(make_aiohttp_handler(build_registry(request.app[STORE_KEY])))
        return await stock[0](request)

    return middleware


async def _until_listening(*addresses: str, timeout: float = 30.0) -> None:
    from spec_exporter.app import listen_address

    deadline = time.monotonic() + timeout
    for address in addresses:
        host, port = listen_address(address)
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing listens on {address} after {timeout:.0f} s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            break


def run_serve(args: argparse.Namespace) -> None:
    from spec_exporter.app import listen_address, serve
    from spec_exporter.config import settings_from_mapping
    from spec_exporter.logs import setup_logging

    setup_logging("warn")
    # What `spec-exporter --target URL --tap.listen-address ADDR --poll.interval 1s` builds.
    settings = settings_from_mapping(
        {
            "targets": [{"name": "bench", "url": args.target, "metrics_path": args.metrics_path}],
            "poll": {"interval": args.poll_interval},
            "tap": {"listen_address": args.tap_listen},
        }
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(
            serve(
                settings,
                listen=args.listen,
                tap_listen=settings.tap.listen_address,
                stop=stop,
                middlewares=[_stock_metrics()] if args.no_cache else [],
            )
        )
        listening = asyncio.create_task(_until_listening(args.tap_listen, args.listen))
        await asyncio.wait([task, listening], return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # serve failed to start: its exception, not a READY line
            listening.cancel()
            await task
            return
        await listening
        print(f"READY {listen_address(args.listen)[1]}", flush=True)
        await task

    asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tap_upstream", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    up = sub.add_parser("upstream", help="a vLLM-shaped streaming chat-completions server")
    up.add_argument("--interval-ms", type=float, default=15.0, help="decoding step (default %(default)s)")
    tap = sub.add_parser("tap", help="the real tap in front of --upstream")
    tap.add_argument("--upstream", required=True)
    srv = sub.add_parser("serve", help="the exporter with the proxy tap in one process, as spec-exporter runs them")
    srv.add_argument("--target", required=True, help="the upstream's base URL (polled, and the tap's upstream)")
    srv.add_argument("--metrics-path", default="/metrics", help="the path polled on it (default %(default)s)")
    srv.add_argument("--listen", required=True, metavar="HOST:PORT", help="the exporter's address")
    srv.add_argument("--tap-listen", required=True, metavar="HOST:PORT", help="the tap's address")
    srv.add_argument("--poll-interval", default="1s", help="(default %(default)s)")
    srv.add_argument(
        "--no-cache",
        action="store_true",
        help="serve /metrics with prometheus_client's stock aiohttp handler on the loop, as before ExpositionCache",
    )
    args = p.parse_args(argv)
    {"upstream": run_upstream, "tap": run_tap, "serve": run_serve}[args.role](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
