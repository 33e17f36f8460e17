"""Do scrapes of the exporter delay the token streams its tap relays? Stream latency with and without scrapers.

    python -m bench.bench_scrapes            # 4 scrape loads × 2 /metrics handlers + a control, 2 pairs each
    python -m bench.bench_scrapes --quick    # 1 pair each

A full run takes about 3 min on a quiet 2-core machine (4-4.5 min with other jobs using most of it), --quick
about half that.

The exporter and the proxy tap share one process and one event loop, as `spec-exporter --tap.listen-address`
runs them (`bench.tap_upstream serve`: `spec_exporter.app.serve` with a config targeting the upstream, polled
every 1 s). Four processes on 127.0.0.1:

- *upstream* (`bench.tap_upstream upstream`): the vLLM-shaped SSE streams of `bench.bench_tap` (one chunk per
  15 ms step, each chunk's id its send time), and a vLLM /metrics for the exporter to poll: the real vLLM 0.32
  scrape, or the same replicated for `--engines` engines (a larger exposition, so one rendering of the exporter's
  own /metrics costs tens of milliseconds);
- *exporter*, two of them, started side by side for each exposition: one as the code is (`/metrics` from
  `ExpositionCache`: one rendering per published state, in a worker thread, shared by concurrent scrapes, gzip
  cached too), and one with `--no-cache`: prometheus_client's stock `make_aiohttp_handler(registry)` rendering
  every scrape on the loop, what the exporter did before the cache (the reference);
- *streams*: this process, `bench.bench_tap`'s load: 64 staggered streamed chat completions through the tap in a
  closed loop, every chunk's latency = read time − send time;
- *scrapers*: a process of its own (so its work never sits in the streams' event loop), 50 concurrent
  clients each fetching the exporter's /metrics with Prometheus' Accept header (OpenMetrics) on a keep-alive
  connection, in a closed loop (the next scrape as soon as one is read) or each every `--paced` seconds. As a
  control, the same closed loop also runs against the upstream's /metrics instead, while the streams go through
  an exporter nobody scrapes: what the scrape traffic costs a shared machine (one more busy process, the same
  HTTP work elsewhere), as opposed to what it costs the exporter's loop.

For each scrape load and each exporter, runs alternate in pairs, (a) no scrapers then (b) scrapers, then (b)
then (a); a run warms up (0.5 s, scrapers already going), measures a fixed window, then lets open streams and
scrapes finish unmeasured. Added = (b) − (a) and ratio = (b) / (a) of the chunk latency within a pair; the table
shows the median over pairs. Also per run: scrapes served per second in the window (and their latency), and CPU
from /proc (all threads) of the exporter, the scrapers and the rest of the machine (other jobs, host steal).

Every stream is checked as bench_tap checks it (complete, `data: [DONE]`, no usage chunk through the tap), every
scrape too (200, decodes, a whole exposition with the exporter's families; gzip when asked for), and at the end
each exporter's own spec_decode_tap_requests_total must count every stream it relayed as measured, with no tap
errors. Raw numbers go to bench/results/scrapes-*.json. No wall-clock number fails the run; a broken stream,
scrape or count does (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from bench.bench_resources import PROMETHEUS_ACCEPT
from bench.bench_tap import Server, one_run, start_server, summary_ms, wait_quiet
from bench.common import ROOT, machine, machine_line, markdown_table, write_results
from bench.tap_upstream import now_ns
from harness.ports import free_port

CONCURRENCY = 64
_TAP_REQUESTS = re.compile(r"^spec_decode_tap_requests_total\{([^}]*)\} (\S+)$", re.MULTILINE)
_TAP_ERRORS = re.compile(r"^spec_decode_tap_errors_total\{[^}]*\} (\S+)$", re.MULTILINE)
_POLL_ERRORS = re.compile(r"^spec_decode_exporter_poll_errors_total\{([^}]*)\} (\S+)$", re.MULTILINE)
_MUST_HAVE = b"spec_decode_exporter_target_up"


# ---------------------------------------------------------------------------------------------- scrapers


@dataclass
class Scrapes:
    window: tuple[int, int]
    latencies: list[int] = field(default_factory=list)
    wire_bytes: int = 0
    done: int = 0
    bad: list[str] = field(default_factory=list)
    bad_count: int = 0


async def scrape_once(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], want_gzip: bool, of_vllm: bool = False
) -> str:
    """One scrape, checked as Prometheus would read it; '' if good, else what was wrong."""
    async with session.get(url, headers=headers) as r:
        body = await r.read()
        status, encoding = r.status, r.headers.get("Content-Encoding", "")
    if status != 200:
        return f"status {status}"
    if want_gzip:
        if encoding != "gzip":
            return f"asked for gzip, got Content-Encoding {encoding!r}"
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as e:
            return f"gzip body does not decode: {e}"
    elif encoding:
        return f"unasked Content-Encoding {encoding!r}"
    if of_vllm:  # the control: the upstream's vLLM text, as it serves it
        return "" if body.endswith(b"\n") and b"vllm:" in body else f"not the vLLM scrape ({len(body)} bytes)"
    if not body.endswith(b"# EOF\n") or _MUST_HAVE not in body:
        return f"not a whole OpenMetrics exposition of the exporter ({len(body)} bytes, tail {body[-80:]!r})"
    return ""


async def scrape_load(command: dict[str, Any]) -> dict[str, Any]:
    """`scrapers` clients on `url` until the window ends (closed loop, or each every `interval` s)."""
    window = (int(command["window"][0]), int(command["window"][1]))
    want_gzip, interval = bool(command["gzip"]), float(command["interval"])
    headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip" if want_gzip else "identity"}
    load = Scrapes(window)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def scraper(i: int) -> None:
            rng = random.Random(i)
            due = now_ns() + int(rng.random() * interval * 1e9)
            while now_ns() < window[1]:
                if interval:
                    await asyncio.sleep(max(0.0, (due - now_ns()) / 1e9))
                    # A scrape that took longer than the interval makes the next one late, not two at once.
                    due = max(due + int(interval * 1e9), now_ns())
                t0 = now_ns()
                try:
                    problem = await scrape_once(session, command["url"], headers, want_gzip, command["of_vllm"])
                except (aiohttp.ClientError, TimeoutError) as e:
                    problem = f"{type(e).__name__}: {e}"
                t1 = now_ns()
                load.done += 1
                if problem:
                    load.bad_count += 1
                    if len(load.bad) < 5:
                        load.bad.append(problem)
                elif window[0] <= t1 < window[1]:
                    load.latencies.append(t1 - t0)

        await asyncio.gather(*(scraper(i) for i in range(int(command["scrapers"]))))
    seconds = (window[1] - window[0]) / 1e9
    return {
        "scrapes_in_window": len(load.latencies),
        "scrapes_per_second": len(load.latencies) / seconds,
        "scrape_latency_ms": summary_ms(load.latencies),
        "scrapes_done": load.done,
        "bad_scrapes": load.bad_count,
        "bad_examples": load.bad,
    }


def scraper_role() -> int:
    """The scrapers' process: one JSON command per stdin line, one `SCRAPES {...}` line back for each."""

    async def serve() -> None:
        print("READY 0", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            print("SCRAPES " + json.dumps(await scrape_load(json.loads(line))), flush=True)

    asyncio.run(serve())
    return 0


@dataclass
class ScraperProcess:
    proc: asyncio.subprocess.Process

    @classmethod
    async def start(cls) -> ScraperProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.bench_scrapes",
            "--scraper-role",
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.startswith(b"READY"):
            raise RuntimeError(f"the scrapers' process failed to start: {line!r}")
        return cls(proc)

    def go(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")

    async def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 180)
        if not line.startswith(b"SCRAPES "):
            raise RuntimeError(f"the scrapers' process answered {line!r}")
        return json.loads(line[len(b"SCRAPES ") :])  # type: ignore[no-any-return]

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# ---------------------------------------------------------------------------------------------- exporters


@dataclass
class Exporter:
    mode: str  # "cache" (the code as it is) or "stock" (--no-cache)
    server: Server
    tap_url: str
    streams_relayed: int = 0

    @property
    def metrics_url(self) -> str:
        return self.server.url + "/metrics"


async def start_exporter(mode: str, upstream: Server, metrics_path: str) -> Exporter:
    listen, tap = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = ["serve", "--target", upstream.url, "--metrics-path", metrics_path, "--listen", listen, "--tap-listen", tap]
    server = await start_server(f"exporter ({mode})", *args, *(["--no-cache"] if mode == "stock" else []))
    return Exporter(mode, server, f"http://{tap}")


async def own_counts(session: aiohttp.ClientSession, exporter: Exporter) -> dict[str, Any]:
    """What the exporter itself exports about its run: tap requests measured, tap errors, failed polls."""
    async with session.get(exporter.metrics_url) as r:
        text = (await r.read()).decode()
    return {
        "measured": sum(float(v) for labels, v in _TAP_REQUESTS.findall(text) if 'outcome="measured"' in labels),
        "tap_errors": sum(float(v) for v in _TAP_ERRORS.findall(text)),
        "poll_errors": {labels: float(v) for labels, v in _POLL_ERRORS.findall(text) if float(v)},
    }


# ---------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Load:
    label: str
    metrics_path: str
    gzip: bool
    interval: float  # 0: closed loop
    # The control: the same scrapers on the upstream's /metrics, another process on the same cores, while the
    # streams run through an exporter nobody scrapes. What the scrape load costs the box, not the exporter's loop.
    elsewhere: bool = False


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


async def run_pair_half(
    session: aiohttp.ClientSession,
    scrapers: ScraperProcess,
    exporter: Exporter,
    upstream: Server,
    load: Load,
    with_scrapes: bool,
    args: argparse.Namespace,
    pids: dict[str, int],
    seed: int,
) -> dict[str, Any]:
    t0 = now_ns()
    window = [t0 + int(args.warmup * 1e9), t0 + int((args.warmup + args.measure) * 1e9)]
    if with_scrapes:
        scrapers.go(
            {
                "url": upstream.url + "/metrics" if load.elsewhere else exporter.metrics_url,
                "of_vllm": load.elsewhere,
                "scrapers": args.scrapers,
                "gzip": load.gzip,
                "interval": load.interval,
                "window": window,
            }
        )
    run = await one_run(
        session,
        "scrapes" if with_scrapes else "no scrapes",
        exporter.tap_url,
        CONCURRENCY,
        args,
        pids | {"exporter": exporter.server.proc.pid},
        seed,
        "staggered",
    )
    run.pop("_samples")
    run["scrapes"] = await scrapers.result() if with_scrapes else None
    run["load"], run["exporter"] = load.label, exporter.mode
    exporter.streams_relayed += run["streams_completed"]
    return run


def summarize(load: Load, mode: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over pairs of (b) − (a) and (b) / (a); pair i is the i-th run without and the i-th with scrapes."""
    quiet = [r for r in runs if r["scrapes"] is None]
    busy = [r for r in runs if r["scrapes"] is not None]
    row: dict[str, Any] = {"load": load.label, "exporter": mode, "elsewhere": load.elsewhere, "pairs": len(busy)}
    for q in ("p50", "p99"):
        a = [r["chunk_latency_ms"][q] for r in quiet]
        b = [r["chunk_latency_ms"][q] for r in busy]
        row[f"quiet_{q}"], row[f"busy_{q}"] = _median(a), _median(b)
        row[f"added_{q}_per_pair"] = [y - x for x, y in zip(a, b, strict=True)]
        row[f"ratio_{q}_per_pair"] = [y / x for x, y in zip(a, b, strict=True)]
        row[f"added_{q}"] = _median(row[f"added_{q}_per_pair"])
        row[f"ratio_{q}"] = _median(row[f"ratio_{q}_per_pair"])
    row["scrapes_per_second"] = _median([r["scrapes"]["scrapes_per_second"] for r in busy])
    row["scrape_p50_ms"] = _median([r["scrapes"]["scrape_latency_ms"]["p50"] for r in busy])
    row["chunks_per_second_quiet"] = _median([r["chunks_per_second"] for r in quiet])
    row["chunks_per_second_busy"] = _median([r["chunks_per_second"] for r in busy])
    # A stall longer than the window leaves few (or no) chunks to measure: the delivered rate says how many.
    row["throughput_ratio_per_pair"] = [
        y["chunks_per_second"] / x["chunks_per_second"] for x, y in zip(quiet, busy, strict=True)
    ]
    row["throughput_ratio"] = _median(row["throughput_ratio_per_pair"])
    for who in ("exporter", "scrapers", "client", "upstream"):
        row[f"cpu_{who}_quiet"] = _median([r["cpu_cores"][who] for r in quiet])
        row[f"cpu_{who}_busy"] = _median([r["cpu_cores"][who] for r in busy])
    # The exporter's CPU per scrape: its CPU in (b) less what (a)'s would have been for (b)'s chunks (relaying
    # costs per chunk, and a starved exporter relays fewer), per scrape served in the window.
    per_scrape = [
        1000
        * (y["cpu_seconds"]["exporter"] - x["cpu_seconds"]["exporter"] * y["chunks"] / x["chunks"])
        / y["scrapes"]["scrapes_in_window"]
        for x, y in zip(quiet, busy, strict=True)
        if y["scrapes"]["scrapes_in_window"] and x["chunks"]
    ]
    row["exporter_cpu_ms_per_scrape"] = _median(per_scrape)
    row["others_max"] = max(r["cpu_cores"]["others"] for r in runs)
    row["steal_max"] = max(r["cpu_cores"]["steal"] for r in runs)
    return row


def _pair(a: float, b: float, spec: str = ".2f", unit: str = "") -> str:
    """ "a / b"; a value that is NaN had no chunk in its window to measure (a stall longer than the window)."""
    if a != a and b != b:
        return "no chunk in window"
    return " / ".join(format(v, spec) + unit if v == v else "none" for v in (a, b))


MODE_NAMES = {"cache": "ExpositionCache (as is)", "stock": "stock handler (before)"}


def served_by(row: dict[str, Any]) -> str:
    return "the upstream (control)" if row.get("elsewhere") else MODE_NAMES[row["exporter"]]


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "scrape load",
        "/metrics served by",
        "chunk latency (a) no scrapes p50 / p99 (ms)",
        "(b) with scrapes p50 / p99 (ms)",
        "added p50 / p99 (ms)",
        "ratio (b)/(a) p50 / p99",
        "chunks/s (b)/(a)",
        "scrapes/s (scrape p50 ms)",
        "exporter CPU cores (a) / (b)",
        "exporter CPU ms / scrape",
        "scrapers' CPU cores",
        "other jobs / steal, cores (max)",
    ]
    body = [
        [
            r["load"],
            served_by(r),
            _pair(r["quiet_p50"], r["quiet_p99"]),
            _pair(r["busy_p50"], r["busy_p99"]),
            f"**{_pair(r['added_p50'], r['added_p99'], '+.2f')}**",
            _pair(r["ratio_p50"], r["ratio_p99"], unit="×"),
            f"{r['throughput_ratio']:.2f}",
            f"{r['scrapes_per_second']:,.0f} ({r['scrape_p50_ms']:.1f})",
            f"{r['cpu_exporter_quiet']:.2f} / {r['cpu_exporter_busy']:.2f}",
            f"{r['exporter_cpu_ms_per_scrape']:.2f}",
            f"{r['cpu_scrapers_busy']:.2f}",
            f"{r['others_max']:.2f} / {r['steal_max']:.2f}",
        ]
        for r in rows
    ]
    return markdown_table(header, body, align_right_from=2)


def noise_table(rows: list[dict[str, Any]]) -> str:
    def fmt(values: list[float], spec: str) -> str:
        return ", ".join(format(v, spec) if v == v else "none" for v in values)

    header = [
        "scrape load",
        "/metrics served by",
        "added p50 per pair (ms)",
        "added p99 per pair (ms)",
        "chunks/s (b)/(a) per pair",
    ]
    body = [
        [
            r["load"],
            served_by(r),
            fmt(r["added_p50_per_pair"], "+.2f"),
            fmt(r["added_p99_per_pair"], "+.2f"),
            fmt(r["throughput_ratio_per_pair"], ".2f"),
        ]
        for r in rows
    ]
    return markdown_table(header, body, align_right_from=2)


async def amain(args: argparse.Namespace) -> int:
    info = machine()
    print(machine_line(info), flush=True)
    loads = [
        Load(f"{args.scrapers} closed loop", "/metrics", False, 0.0),
        Load(f"{args.scrapers} closed loop, at the upstream", "/metrics", False, 0.0, elsewhere=True),
        Load(f"{args.scrapers} closed loop, gzip", "/metrics", True, 0.0),
        Load(f"{args.scrapers} closed loop, {args.engines} engines", f"/metrics/engines/{args.engines}", False, 0.0),
    ]
    if args.paced:
        loads.append(Load(f"{args.scrapers} each every {args.paced:g} s, gzip", "/metrics", True, args.paced))
    failures: list[str] = []
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    tap_checks: list[dict[str, Any]] = []
    upstream = await start_server("upstream", "upstream", "--interval-ms", str(args.interval_ms))
    scrapers = await ScraperProcess.start()
    exporters: list[Exporter] = []
    try:
        pids = {"upstream": upstream.proc.pid, "client": os.getpid(), "scrapers": scrapers.proc.pid}
        print(
            f"upstream pid {upstream.proc.pid} · scrapers pid {scrapers.proc.pid} · client pid {os.getpid()} · "
            f"{CONCURRENCY} staggered streams of {args.min_tokens}-{args.max_tokens} tokens, one chunk per "
            f"{args.interval_ms:g} ms · warm-up {args.warmup:g} s, window {args.measure:g} s, {args.repeats} pair(s)",
            flush=True,
        )
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
        # No Accept-Encoding: the tap injects include_usage only for a client that accepts identity alone.
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
        ) as session:
            seed = 0
            budget = [args.quiet_wait]
            for path in dict.fromkeys(load.metrics_path for load in loads):
                group = [exp for mode in ("cache", "stock") for exp in [await start_exporter(mode, upstream, path)]]
                exporters += group
                for exp in group:
                    print(
                        f"exporter ({exp.mode}) pid {exp.server.proc.pid} {exp.server.url}, tap {exp.tap_url}, "
                        f"polling {path}",
                        flush=True,
                    )
                await asyncio.sleep(2 * 1.0)  # a couple of polls: the state the scrapes render is a real one
                flip = 0
                for load in (ld for ld in loads if ld.metrics_path == path):
                    kept: dict[str, list[dict[str, Any]]] = {"cache": [], "stock": []}
                    # The control's streams need one exporter only: it is not the one scraped.
                    targets = group[:1] if load.elsewhere else group
                    for _ in range(args.repeats):
                        for exp in targets if flip % 2 == 0 else targets[::-1]:
                            if args.quiet_wait:
                                ours = pids | {e.mode: e.server.proc.pid for e in group}
                                await wait_quiet(ours, budget, args.quiet_below)
                            for with_scrapes in (False, True) if flip % 2 == 0 else (True, False):
                                seed += 1
                                run = await run_pair_half(
                                    session, scrapers, exp, upstream, load, with_scrapes, args, pids, seed
                                )
                                lat, sc = run["chunk_latency_ms"], run["scrapes"]
                                scraped = (
                                    f" · {sc['scrapes_per_second']:,.0f} scrapes/s (p50 "
                                    f"{sc['scrape_latency_ms']['p50']:.1f} ms)"
                                    if sc
                                    else ""
                                )
                                print(
                                    f"  {load.label:>36} {exp.mode:>5} {'(b)' if with_scrapes else '(a)'}: chunk p50 "
                                    f"{lat['p50']:.2f} p99 {lat['p99']:.2f} ms · {run['chunks_per_second']:,.0f} "
                                    f"chunks/s{scraped} · CPU exporter {run['cpu_cores']['exporter']:.2f} scrapers "
                                    f"{run['cpu_cores']['scrapers']:.2f} client {run['cpu_cores']['client']:.2f} "
                                    f"up {run['cpu_cores']['upstream']:.2f} · others {run['cpu_cores']['others']:.2f} "
                                    f"steal {run['cpu_cores']['steal']:.2f} cores",
                                    flush=True,
                                )
                                if run["bad_streams"] or run["worker_error_count"]:
                                    failures.append(
                                        f"{load.label} {exp.mode}: {run['bad_streams']} bad streams "
                                        f"{run['bad_examples']}, errors {run['worker_errors']}"
                                    )
                                if sc and sc["bad_scrapes"]:
                                    failures.append(
                                        f"{load.label} {exp.mode}: {sc['bad_scrapes']} bad scrapes {sc['bad_examples']}"
                                    )
                                kept[exp.mode].append(run)
                                runs.append(run)
                                await asyncio.sleep(args.pause)
                            flip += 1
                    rows += [summarize(load, exp.mode, kept[exp.mode]) for exp in targets]
                await asyncio.sleep(2.5 * 1.0)  # two more polls: the exporter has read the tap's last counts
                for exp in group:
                    counts = await own_counts(session, exp)
                    tap_checks.append({"exporter": exp.mode, "path": path, "relayed": exp.streams_relayed, **counts})
                    if counts["measured"] != exp.streams_relayed or counts["tap_errors"]:
                        failures.append(
                            f"exporter ({exp.mode}, {path}) counts {counts['measured']:g} measured tap requests and "
                            f"{counts['tap_errors']:g} tap errors for {exp.streams_relayed} streams relayed"
                        )
                    await exp.server.stop()
                    exporters.remove(exp)
    finally:
        for exp in exporters:
            await exp.server.stop()
        await scrapers.stop()
        await upstream.stop()
    print()
    print(table(rows))
    print()
    print("Noise: each pair")
    print()
    print(noise_table(rows))
    print()
    streams = sum(r["streams_completed"] for r in runs)
    scrapes = sum(r["scrapes"]["scrapes_done"] for r in runs if r["scrapes"])
    print(
        f"correctness: {streams} streams and {scrapes} scrapes checked; tap counts as exported: "
        + "; ".join(f"{c['exporter']} {c['path']}: {c['measured']:g} measured of {c['relayed']}" for c in tap_checks)
    )
    # Not a failure (a poll that timed out is a wall-clock effect), but what the stalls did to the exporter's job.
    print(
        "polls failed: "
        + "; ".join(f"{c['exporter']} {c['path']}: {sum(c['poll_errors'].values()):g}" for c in tap_checks)
    )
    for f in failures:
        print("FAILED: " + f)
    if not args.no_json:
        saved = write_results(
            "scrapes",
            {
                "machine": info,
                "settings": {k: v for k, v in vars(args).items() if k != "scraper_role"},
                "rows": rows,
                "runs": runs,
                "tap_checks": tap_checks,
                "upstream": upstream.report("UPSTREAM"),
                "failures": failures,
            },
        )
        print(f"\nraw numbers: {saved}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_scrapes", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 pair per setting instead of 2")
    p.add_argument("--scrapers", type=int, default=50, help="concurrent scrapers (default %(default)s)")
    p.add_argument(
        "--engines", type=int, default=4, help="engines in the large exposition's vLLM scrape (default %(default)s)"
    )
    p.add_argument(
        "--paced",
        type=float,
        default=1.0,
        metavar="S",
        help="also run the scrapers paced, each every S seconds, with gzip (default %(default)s; 0: not)",
    )
    p.add_argument("--repeats", type=int, default=2, help="(a)/(b) pairs per setting (default %(default)s)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds before the window (default %(default)s)")
    p.add_argument("--measure", type=float, default=2.0, help="measured window, seconds (default %(default)s)")
    p.add_argument("--pause", type=float, default=0.2, help="seconds between runs (default %(default)s)")
    p.add_argument("--interval-ms", type=float, default=15.0, help="decoding step (default %(default)s)")
    # Shorter streams than bench_tap's 64-128: the unmeasured drain after each window is most of a run.
    p.add_argument("--min-tokens", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        metavar="S",
        help="before each pair, wait for other jobs to use under --quiet-below cores, up to S seconds in all "
        "(default %(default)s; 0: never wait)",
    )
    p.add_argument("--quiet-below", type=float, default=0.3, metavar="CORES", help="(default %(default)s)")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/scrapes-*.json")
    p.add_argument("--scraper-role", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.scraper_role:
        return scraper_role()
    if args.quick:
        args.repeats = 1
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(amain(args))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
