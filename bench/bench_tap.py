"""What the tap adds to a streamed completion: latency, throughput and CPU, direct vs through the tap.

    python -m bench.bench_tap            # 1, 64 and 256 streams (+ 64 in lockstep), 3 pairs each: 3 min on a quiet box
    python -m bench.bench_tap --quick    # 1 pair each, shorter windows: about 45 s
    python -m bench.bench_tap --pin      # the tap on a core of its own, the upstream and the client on the other

Three processes on loopback (127.0.0.1, free ports): a vLLM-shaped upstream (`bench.tap_upstream upstream`,
aiohttp) streaming 64-128 tokens per response, one chunk per 15 ms decoding step; the real tap
(`bench.tap_upstream tap`: `create_tap_app` under `web.AppRunner(access_log=None, handler_cancellation=True)`) in
front of it; and this process, the load: an aiohttp client keeping N streams open (closed loop: each worker
starts the next request when its stream ends), every request a streamed chat completion without
`stream_options`, so the tap injects include_usage upstream and withholds the usage chunk from the client.

Two step patterns (see bench/tap_upstream.py): `staggered` (1, 64, 256 streams), each stream on its own phase of
the 15 ms grid, so chunks arrive spread out and the tap's hop is measured alone; and `lockstep` (64), every
stream's chunk written back to back in the same instant, as if a whole batch's step were serialized at no cost:
the worst case for any proxy, which then relays a burst of N chunks one after the other.

For each setting, direct and tapped runs alternate in pairs (direct, tap, then tap, direct, ...). A run warms up,
then measures a fixed window, then lets open streams finish (unmeasured). Measured in the window:

- chunk latency: each chunk's `id` carries its send time (CLOCK_MONOTONIC ns, system-wide on Linux, taken by
  the upstream just before the write); latency = the time the client's read returned it − that. Direct, it is
  upstream write → loopback → client; tapped, the tap's hop is added;
- TTFB: request sent → first body byte (the role chunk, sent by the upstream at once), for requests started
  in the window; and, before the runs, an idle probe: 1-token requests one at a time, direct and tapped
  alternating, which also gives the tap's CPU per request;
- throughput: chunks delivered per second;
- tap CPU: the tap process's CPU time (all threads, /proc/<pid>/task/*/schedstat) over the window, per 1000
  chunks delivered; the upstream's and the client's CPU are recorded too, and the background: the machine's
  busy time (/proc/stat) less our three processes', and the time the hypervisor stole from our virtual CPUs.

Added latency = tapped − direct within a pair; the table shows the median over pairs, the noise table each pair.
On a shared machine, each pair waits for other jobs to quiet down (--quiet-wait) and a pair during which they
(or the hypervisor's steal) took over --contaminated-above cores is run again (--redo times in all; the redone
pairs stay in the JSON, marked).
Every stream is checked: complete, ends with `data: [DONE]`, and, through the tap, without the usage chunk; at
the end, the tap's recorder must have measured every tapped stream, with no errors. Raw numbers go to
bench/results/tap-*.json. No wall-clock number fails the run; a broken stream or recorder count does (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from bench.common import ROOT, machine, machine_line, markdown_table, write_results
from bench.tap_upstream import INTERVAL_HEADER, PATTERN_HEADER, now_ns

CLK_TCK = os.sysconf("SC_CLK_TCK")
_STAMP = re.compile(rb'"id":"chatcmpl-([0-9a-f]{16})"')
_DONE = b"data: [DONE]\n\n"
_USAGE = b'"choices":[]'
PROMPT = (
    "Explain in two short paragraphs why speculative decoding speeds up generation only when the draft "
    "model's proposals are accepted often, and what a serving team should watch to know it still pays off."
)
# The targets, at 64 streams, and the anchors quoted there.
TARGET_P50_MS = 0.5
TARGET_P99_MS = 2.0
TARGET_THROUGHPUT = 0.95
TARGET_CONCURRENCY = 64


# ---------------------------------------------------------------------------------------------- processes


def system_ns() -> tuple[int, int]:
    """From /proc/stat, all cores: (time busy with anything, not idle nor iowait; time stolen by the hypervisor,
    when it ran something else on our virtual CPUs)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(fields[:7]) - fields[3] - fields[4]
    return busy * 1_000_000_000 // CLK_TCK, fields[7] * 1_000_000_000 // CLK_TCK


def cpu_ns(pid: int) -> int:
    """CPU time of a whole process (every thread), in ns: schedstat where the kernel has it, else utime+stime."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        return total
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK


@dataclass
class Server:
    name: str
    proc: asyncio.subprocess.Process
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """SIGTERM, collect what it prints on the way out, SIGKILL if it lingers."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = await asyncio.wait_for(self.proc.communicate(), 10)
            self.lines += out.decode(errors="replace").splitlines()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def report(self, prefix: str) -> dict[str, Any] | None:
        for line in self.lines:
            if line.startswith(prefix + " "):
                return json.loads(line[len(prefix) + 1 :])
        return None


async def start_server(name: str, *args: str) -> Server:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.tap_upstream",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,  # the tap logs warnings (if any) to our stderr
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{name} did not start within 30 s") from None
    if not line.startswith(b"READY "):
        await proc.wait()
        raise RuntimeError(f"{name} failed to start (exit {proc.returncode}): {line!r}")
    return Server(name, proc, int(line.split()[1]))


# ---------------------------------------------------------------------------------------------- one run


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) on sorted data."""
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(samples_ns: list[int]) -> dict[str, Any]:
    ordered = sorted(x / 1e6 for x in samples_ns)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else float("nan"),
    }


@dataclass
class Load:
    """What one run's workers collect; one event loop, so plain counters."""

    window: tuple[int, int]
    latencies: list[int] = field(default_factory=list)
    ttfb: list[int] = field(default_factory=list)
    chunks: int = 0
    streams_done: int = 0
    streams_in_window: int = 0
    bad: list[str] = field(default_factory=list)
    bad_count: int = 0


async def stream_once(
    session: aiohttp.ClientSession, url: str, tokens: int, load: Load, headers: dict[str, str]
) -> None:
    body = json.dumps(
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens,
            "temperature": 0.4,
            "stream": True,
        }
    ).encode()
    start, end = load.window
    lat = load.latencies
    parts: list[bytes] = []
    first = 0
    chunks = 0
    sent = now_ns()
    async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
        status = r.status
        async for data in r.content.iter_any():
            t = now_ns()
            if not first:
                first = t
            parts.append(data)
            if start <= t < end:
                for m in _STAMP.finditer(data):
                    lat.append(t - int(m.group(1), 16))
                    chunks += 1
    load.chunks += chunks
    load.streams_done += 1
    if start <= sent < end and first:
        load.ttfb.append(first - sent)
        load.streams_in_window += 1
    received = b"".join(parts)
    events = received.count(b"data: ")
    if status != 200 or not received.endswith(_DONE) or _USAGE in received or events != tokens + 3:
        load.bad_count += 1
        if len(load.bad) < 5:
            load.bad.append(f"status {status}, {events} events for {tokens} tokens, tail {received[-200:]!r}")


async def one_run(
    session: aiohttp.ClientSession,
    mode: str,
    url: str,
    concurrency: int,
    args: argparse.Namespace,
    pids: dict[str, int],
    seed: int,
    pattern: str,
    interval_ms: float | None = None,
) -> dict[str, Any]:
    t0 = now_ns()
    window = (t0 + int(args.warmup * 1e9), t0 + int((args.warmup + args.measure) * 1e9))
    load = Load(window)
    headers = {"Content-Type": "application/json", PATTERN_HEADER: pattern}
    if interval_ms is not None:
        headers[INTERVAL_HEADER] = str(interval_ms)

    async def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while now_ns() < window[1]:
            await stream_once(session, url, rng.randint(args.min_tokens, args.max_tokens), load, headers)

    cpu: dict[str, dict[str, int]] = {}

    async def sampler() -> None:
        for edge, at in (("start", window[0]), ("end", window[1])):
            await asyncio.sleep(max(0.0, (at - now_ns()) / 1e9))
            busy, steal = system_ns()
            cpu[edge] = {name: cpu_ns(pid) for name, pid in pids.items()} | {"all": busy, "steal": steal}
            cpu[edge]["wall"] = now_ns()

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    sampling = asyncio.create_task(sampler())
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await sampling
    drained = (now_ns() - window[1]) / 1e9
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    wall = (cpu["end"]["wall"] - cpu["start"]["wall"]) / 1e9
    cpu_s = {name: (cpu["end"][name] - cpu["start"][name]) / 1e9 for name in pids}
    # Whatever else ran on the machine meanwhile (other jobs, the kernel's own threads): the noise to report.
    cpu_s["others"] = max(0.0, (cpu["end"]["all"] - cpu["start"]["all"]) / 1e9 - sum(cpu_s.values()))
    cpu_s["steal"] = (cpu["end"]["steal"] - cpu["start"]["steal"]) / 1e9
    out = {
        "mode": mode,
        "concurrency": concurrency,
        "pattern": pattern,
        "interval_ms": interval_ms if interval_ms is not None else args.interval_ms,
        "window_seconds": wall,
        "drain_seconds": drained,
        "chunk_latency_ms": summary_ms(load.latencies),
        "ttfb_ms": summary_ms(load.ttfb),
        "chunks": load.chunks,
        "chunks_per_second": load.chunks / wall,
        "streams_completed": load.streams_done,
        "streams_started_in_window": load.streams_in_window,
        "cpu_seconds": cpu_s,
        "cpu_cores": {name: s / wall for name, s in cpu_s.items()},
        "bad_streams": load.bad_count,
        "bad_examples": load.bad,
        "worker_errors": errors[:5],
        "worker_error_count": len(errors),
    }
    if mode == "tap":
        out["tap_cpu_ms_per_1000_chunks"] = 1000 * cpu_s["tap"] / (load.chunks / 1000) if load.chunks else None
    out["_samples"] = (load.latencies, load.ttfb)
    return out


# ---------------------------------------------------------------------------------------------- summary


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float]) -> list[float]:
    values = [v for v in values if v == v]
    return [min(values), max(values)] if values else []


def aggregate(label: str, concurrency: int, pattern: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats; added = median of the per-pair differences (pair i: direct i and tap i)."""
    direct = [r for r in runs if r["mode"] == "direct"]
    tap = [r for r in runs if r["mode"] == "tap"]

    def med(rs: list[dict[str, Any]], key: str, q: str) -> float:
        return _median([r[key][q] for r in rs])

    def added(key: str, q: str) -> list[float]:
        return [t[key][q] - d[key][q] for d, t in zip(direct, tap, strict=True)]

    ratios = [t["chunks_per_second"] / d["chunks_per_second"] for d, t in zip(direct, tap, strict=True)]
    row = {"label": label, "concurrency": concurrency, "pattern": pattern, "repeats": len(tap)}
    for key in ("chunk_latency_ms", "ttfb_ms"):
        for q in ("p50", "p90", "p99"):
            row[f"{key}_direct_{q}"] = med(direct, key, q)
            row[f"{key}_tap_{q}"] = med(tap, key, q)
            diffs = added(key, q)
            row[f"{key}_added_{q}"] = _median(diffs)
            row[f"{key}_added_{q}_per_repeat"] = diffs
            row[f"{key}_added_{q}_spread"] = _spread(diffs)
        row[f"{key}_samples_per_run"] = [r[key]["n"] for r in runs]
    row["chunks_per_second_direct"] = _median([r["chunks_per_second"] for r in direct])
    row["chunks_per_second_tap"] = _median([r["chunks_per_second"] for r in tap])
    row["throughput_ratio"] = _median(ratios)
    row["throughput_ratio_spread"] = _spread(ratios)
    row["throughput_ratio_per_repeat"] = ratios
    row["tap_cpu_ms_per_1000_chunks"] = _median([r["tap_cpu_ms_per_1000_chunks"] or float("nan") for r in tap])
    row["tap_cpu_ms_per_1000_chunks_spread"] = _spread([r["tap_cpu_ms_per_1000_chunks"] or float("nan") for r in tap])
    for who in ("tap", "upstream", "client", "others"):
        row[f"cpu_cores_{who}_tap_runs"] = _median([r["cpu_cores"][who] for r in tap])
    for who in ("upstream", "client", "others"):
        row[f"cpu_cores_{who}_direct_runs"] = _median([r["cpu_cores"][who] for r in direct])
    row["cpu_cores_others_max"] = max(r["cpu_cores"]["others"] for r in runs)
    row["cpu_cores_steal_max"] = max(r["cpu_cores"]["steal"] for r in runs)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "streams",
        "chunk latency direct p50 / p99 (ms)",
        "via tap p50 / p99 (ms)",
        "added p50 / p99 (ms)",
        "TTFB p50 direct / tap / added (ms)",
        "chunks/s direct / tap (ratio)",
        "tap CPU ms / 1000 chunks",
        "CPU cores tap + upstream + client (tap runs)",
        "other jobs / host steal, cores (max)",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r["label"],
                f"{r['chunk_latency_ms_direct_p50']:.3f} / {r['chunk_latency_ms_direct_p99']:.3f}",
                f"{r['chunk_latency_ms_tap_p50']:.3f} / {r['chunk_latency_ms_tap_p99']:.3f}",
                f"**{r['chunk_latency_ms_added_p50']:+.3f} / {r['chunk_latency_ms_added_p99']:+.3f}**",
                f"{r['ttfb_ms_direct_p50']:.2f} / {r['ttfb_ms_tap_p50']:.2f} / {r['ttfb_ms_added_p50']:+.2f}",
                f"{r['chunks_per_second_direct']:,.0f} / {r['chunks_per_second_tap']:,.0f} "
                f"({r['throughput_ratio']:.3f})",
                f"{r['tap_cpu_ms_per_1000_chunks']:.1f}",
                f"{r['cpu_cores_tap_tap_runs']:.2f} + {r['cpu_cores_upstream_tap_runs']:.2f} + "
                f"{r['cpu_cores_client_tap_runs']:.2f}",
                f"{r['cpu_cores_others_max']:.2f} / {r['cpu_cores_steal_max']:.2f}",
            ]
        )
    return markdown_table(header, body)


def noise_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "streams",
        "added p50 per pair (ms)",
        "added p99 per pair (ms)",
        "TTFB added p50 per pair (ms)",
        "throughput ratio per pair",
        "pairs redone (background load)",
    ]

    def fmt(values: list[float]) -> str:
        return ", ".join(f"{v:+.3f}" for v in values)

    body = [
        [
            r["label"],
            fmt(r["chunk_latency_ms_added_p50_per_repeat"]),
            fmt(r["chunk_latency_ms_added_p99_per_repeat"]),
            fmt(r["ttfb_ms_added_p50_per_repeat"]),
            ", ".join(f"{v:.3f}" for v in r["throughput_ratio_per_repeat"]),
            str(r.get("pairs_redone_for_background_load", 0)),
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    def met(ok: bool) -> str:
        return "target met" if ok else "target MISSED"

    lines = []
    for r in rows:
        if r["concurrency"] != TARGET_CONCURRENCY:
            continue
        p50, p99 = r["chunk_latency_ms_added_p50"], r["chunk_latency_ms_added_p99"]
        lines.append(
            f"added p50, {r['label']}: {p50:+.3f} ms (target ≤ {TARGET_P50_MS} ms): {met(p50 <= TARGET_P50_MS)}"
        )
        lines.append(
            f"added p99, {r['label']}: {p99:+.3f} ms (target ≤ {TARGET_P99_MS} ms): {met(p99 <= TARGET_P99_MS)}"
        )
    for r in rows:
        ratio = r["throughput_ratio"]
        lines.append(
            f"throughput, {r['label']}: {ratio:.3f}× direct (≥ {TARGET_THROUGHPUT}×): {met(ratio >= TARGET_THROUGHPUT)}"
        )
    return lines


async def ttfb_probe(
    session: aiohttp.ClientSession, urls: dict[str, str], n: int, tap_pid: int
) -> tuple[dict[str, Any], list[str]]:
    """One stream at a time, 1-token completions, direct and tapped requests alternating: TTFB on an idle box,
    and the tap's CPU per request (it is idle between its own requests)."""
    loads = {mode: Load((0, 1 << 62)) for mode in urls}
    headers = {"Content-Type": "application/json", PATTERN_HEADER: "staggered"}
    warm = {mode: Load((0, 0)) for mode in urls}
    for _ in range(10):  # warm-up: first-request costs (connections, lazy imports) are not what is measured
        for mode in urls:
            await stream_once(session, urls[mode], 1, warm[mode], headers)
    cpu0 = cpu_ns(tap_pid)
    for i in range(n):
        for mode in ("direct", "tap") if i % 2 == 0 else ("tap", "direct"):
            await stream_once(session, urls[mode], 1, loads[mode], headers)
    out: dict[str, Any] = {mode: summary_ms(load.ttfb) for mode, load in loads.items()}
    out["tap_cpu_us_per_request"] = (cpu_ns(tap_pid) - cpu0) / n / 1000
    out["tap_streams"] = warm["tap"].streams_done + loads["tap"].streams_done
    out["added_p50"] = out["tap"]["p50"] - out["direct"]["p50"]
    out["added_p90"] = out["tap"]["p90"] - out["direct"]["p90"]
    bad = [
        f"ttfb probe {mode}: {load.bad_count} bad streams {load.bad}"
        for mode, load in [*loads.items(), *warm.items()]
        if load.bad
    ]
    return out, bad


# ---------------------------------------------------------------------------------------------- main


def pin(pids: dict[str, int]) -> dict[str, list[int]]:
    """The tap on a core of its own, the upstream and the client sharing the other(s): no run-queue contention
    between the tap and the rest, as when the tap runs on a many-core GPU host and the clients elsewhere."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return {}
    placement = {"tap": cores[-1:], "upstream": cores[:-1], "client": cores[:-1]}
    for name, pid in pids.items():
        os.sched_setaffinity(pid, placement[name])
    return placement


async def background_load(pids: dict[str, int], seconds: float = 1.0) -> float:
    """Cores busy with anything but our three processes, or stolen by the hypervisor, over `seconds`."""
    ours0, (all0, steal0), t0 = sum(cpu_ns(p) for p in pids.values()), system_ns(), now_ns()
    await asyncio.sleep(seconds)
    ours1, (all1, steal1), t1 = sum(cpu_ns(p) for p in pids.values()), system_ns(), now_ns()
    return max(0.0, ((all1 - all0) - (ours1 - ours0)) / (t1 - t0)) + (steal1 - steal0) / (t1 - t0)


async def wait_quiet(pids: dict[str, int], budget: list[float], threshold: float) -> float:
    """Wait (from a shared budget of seconds) until the rest of the machine uses under `threshold` cores."""
    load = await background_load(pids, 0.5)
    while load >= threshold and budget[0] > 0:
        t0 = now_ns()
        load = await background_load(pids, 1.0)
        budget[0] -= (now_ns() - t0) / 1e9
    return load


async def amain(args: argparse.Namespace) -> int:
    info = machine()
    print(machine_line(info), flush=True)
    plan: list[tuple[str, int, str, float | None]] = []
    for pattern, counts in (("staggered", args.concurrency), ("lockstep", args.lockstep)):
        for c in counts:
            # One stream has nothing to be in step with: both patterns are the same run.
            plan.append((f"{c}, {pattern}" if c > 1 else "1", c, pattern, None))
    if args.unpaced:
        plan.append((f"{args.unpaced}, unpaced", args.unpaced, "lockstep", 0.0))
    upstream = await start_server("upstream", "upstream", "--interval-ms", str(args.interval_ms))
    tap: Server | None = None
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    tapped_streams = 0
    try:
        tap = await start_server("tap", "tap", "--upstream", upstream.url)
        pids = {"tap": tap.proc.pid, "upstream": upstream.proc.pid, "client": os.getpid()}
        pinned = pin(pids) if args.pin else None
        if pinned:
            print(f"pinned: {pinned}", flush=True)
        print(
            f"upstream pid {upstream.proc.pid} :{upstream.port} · tap pid {tap.proc.pid} :{tap.port} · "
            f"client pid {os.getpid()} · {args.min_tokens}-{args.max_tokens} tokens per stream, one chunk per "
            f"{args.interval_ms:g} ms step · warm-up {args.warmup:g} s, window {args.measure:g} s, "
            f"{args.repeats} repeat(s)",
            flush=True,
        )
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
        # No Accept-Encoding: the tap injects include_usage only for a client that accepts identity alone.
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
        ) as session:
            probe: dict[str, Any] | None = None
            if args.ttfb_probe:
                probe, bad = await ttfb_probe(
                    session, {"direct": upstream.url, "tap": tap.url}, args.ttfb_probe, tap.proc.pid
                )
                failures += bad
                tapped_streams += probe["tap_streams"]
                print(
                    f"  idle TTFB probe, {args.ttfb_probe} sequential 1-token requests each way, alternating: "
                    f"direct p50 {probe['direct']['p50']:.3f} ms, tap p50 {probe['tap']['p50']:.3f} ms, "
                    f"added p50 {probe['added_p50']:+.3f} ms, p90 {probe['added_p90']:+.3f} ms; "
                    f"tap CPU {probe['tap_cpu_us_per_request']:.0f} µs per 1-token request (5 events)",
                    flush=True,
                )
            seed = 0
            budget = [args.quiet_wait]
            redo = [args.redo]
            for label, concurrency, pattern, interval in plan:
                kept: list[dict[str, Any]] = []
                contaminated: list[dict[str, Any]] = []
                attempt = 0
                while len(kept) < 2 * args.repeats:
                    if args.quiet_wait:
                        before = budget[0]
                        load = await wait_quiet(pids, budget, args.quiet_below)
                        if before - budget[0] > 0:
                            print(
                                f"  waited {before - budget[0]:.0f} s for a quieter box: {load:.2f} cores busy",
                                flush=True,
                            )
                    pair = []
                    for mode in ("direct", "tap") if attempt % 2 == 0 else ("tap", "direct"):
                        seed += 1
                        url = upstream.url if mode == "direct" else tap.url
                        run = await one_run(session, mode, url, concurrency, args, pids, seed, pattern, interval)
                        run["label"] = label
                        run["attempt"] = attempt
                        latencies, ttfb = run.pop("_samples")
                        if args.keep_samples:
                            run["samples_ns"] = {"chunk_latency": latencies, "ttfb": ttfb}
                        if mode == "tap":
                            tapped_streams += run["streams_completed"]
                        lat = run["chunk_latency_ms"]
                        print(
                            f"  {label:>14} {mode:>6} #{attempt}: chunk p50 {lat['p50']:.3f} p99 {lat['p99']:.3f} ms"
                            f" · TTFB p50 {run['ttfb_ms']['p50']:.2f} ms · {run['chunks_per_second']:,.0f} chunks/s"
                            f" · CPU tap {run['cpu_cores']['tap']:.2f} up {run['cpu_cores']['upstream']:.2f}"
                            f" client {run['cpu_cores']['client']:.2f} · others {run['cpu_cores']['others']:.2f}"
                            f" steal {run['cpu_cores']['steal']:.2f} cores",
                            flush=True,
                        )
                        if run["bad_streams"] or run["worker_error_count"]:
                            failures.append(
                                f"{label} {mode} #{attempt}: {run['bad_streams']} bad streams {run['bad_examples']}, "
                                f"errors {run['worker_errors']}"
                            )
                        pair.append(run)
                        runs.append(run)
                        await asyncio.sleep(args.pause)
                    attempt += 1
                    busy = max(r["cpu_cores"]["others"] + r["cpu_cores"]["steal"] for r in pair)
                    if busy > args.contaminated_above and redo[0] > 0:
                        redo[0] -= 1
                        for r in pair:
                            r["contaminated"] = True
                        contaminated += pair
                        print(
                            f"  (other jobs or the host took up to {busy:.2f} cores during this pair: run it again)",
                            flush=True,
                        )
                        continue
                    kept += pair
                row = aggregate(label, concurrency, pattern, kept)
                row["pairs_redone_for_background_load"] = len(contaminated) // 2
                rows.append(row)
    finally:
        if tap is not None:
            await tap.stop()
        await upstream.stop()
    recorder = tap.report("RECORDER") if tap is not None else None
    upstream_stats = upstream.report("UPSTREAM")
    measured = sum(n for k, n in (recorder or {}).get("requests", {}).items() if k.endswith("/measured"))
    if recorder is None:
        failures.append("the tap printed no recorder summary")
    else:
        if measured != tapped_streams:
            failures.append(f"tap recorder measured {measured} requests, the client completed {tapped_streams}")
        if any(recorder["errors"].values()):
            failures.append(f"tap recorder errors: {recorder['errors']}")
    print()
    print(table(rows))
    print()
    print("Noise: added latency of each direct/tap pair")
    print()
    print(noise_table(rows))
    print()
    for line in verdicts(rows):
        print(line)
    print(
        f"correctness: {sum(r['streams_completed'] for r in runs)} streams checked, "
        f"tap recorder measured {measured} of {tapped_streams} tapped streams, errors {recorder and recorder['errors']}"
    )
    for f in failures:
        print("FAILED: " + f)
    if not args.no_json:
        path = write_results(
            "tap",
            {
                "machine": info,
                "settings": dict(vars(args)),
                "rows": rows,
                "ttfb_probe": probe,
                "runs": runs,
                "pinned": args.pin,
                "tap_recorder": recorder,
                "upstream": upstream_stats,
                "failures": failures,
            },
        )
        print(f"\nraw numbers: {path}")
    return 1 if failures else 0


def counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_tap", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repeat, 0.5 s warm-up, 2 s windows")
    p.add_argument(
        "--concurrency",
        type=counts,
        default=[1, 64, 256],
        help="concurrent streams, staggered pattern, comma-separated (default 1,64,256)",
    )
    p.add_argument(
        "--lockstep",
        type=counts,
        default=[64],
        help="concurrent streams to run again with the lockstep pattern (default 64; '' for none)",
    )
    p.add_argument(
        "--ttfb-probe", type=int, default=100, metavar="N", help="idle TTFB probe requests each way (0: none)"
    )
    p.add_argument("--repeats", type=int, default=3, help="direct/tap pairs per concurrency (default %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the window (default %(default)s)")
    p.add_argument("--measure", type=float, default=3.0, help="measured window, seconds (default %(default)s)")
    p.add_argument("--pause", type=float, default=0.3, help="seconds between runs (default %(default)s)")
    p.add_argument("--interval-ms", type=float, default=15.0, help="decoding step (default %(default)s)")
    p.add_argument("--min-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument(
        "--unpaced",
        type=int,
        default=0,
        metavar="N",
        help="also run N streams with no step cadence (the upstream writes as fast as it can): capacity, not latency",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        metavar="S",
        help="before each direct/tap pair, wait for other jobs on the machine to use under --quiet-below cores, "
        "up to S seconds in all (default %(default)s; 0: never wait)",
    )
    p.add_argument("--quiet-below", type=float, default=0.2, metavar="CORES", help="(default %(default)s)")
    p.add_argument(
        "--redo",
        type=int,
        default=10,
        metavar="N",
        help="run a direct/tap pair again when other jobs used over --contaminated-above cores during it, "
        "up to N times in all (default %(default)s); the redone pairs stay in the JSON, marked",
    )
    p.add_argument("--contaminated-above", type=float, default=0.3, metavar="CORES", help="(default %(default)s)")
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin the tap to the last core and the upstream and the client to the others (default: unpinned)",
    )
    p.add_argument("--keep-samples", action="store_true", help="put every latency sample in the JSON")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/tap-*.json")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.measure, args.ttfb_probe = 1, 0.5, 2.0, 30
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(amain(args))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
