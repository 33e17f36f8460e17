"""The exporter's RSS and CPU at a 5 s poll, against a stand-in vLLM serving the real 0.32 scrape.

    python -m bench.bench_resources                 # 60 s per run, 1 and 8 engines
    python -m bench.bench_resources --seconds 330   # long enough to fill the 5 min ring

For each engine count: a stand-in vLLM (aiohttp, 127.0.0.1, a free port) serves `/metrics` from
`bench.payloads.ScrapeSequence` (the real 0.32 scrape replicated per engine, counters growing at each request);
the real exporter runs as a subprocess,

    python -m spec_exporter --target http://127.0.0.1:PORT --web.listen-address 127.0.0.1:PORT2 \\
        --poll.interval 5s --log.level warn

and, once it answers /readyz (its first poll succeeded), is measured for `--seconds`: VmRSS from
/proc/<pid>/status every second (VmHWM, the peak, at the end), CPU from utime + stime in /proc/<pid>/stat
(all threads, 10 ms ticks) → % of one core. Meanwhile /metrics is scraped every 15 s as Prometheus would (its
Accept header, so OpenMetrics). Everything is on loopback, bounded in time, and both servers are stopped at the
end. This process's own CPU (the stand-in, the scraper) is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import web

from bench.common import git_state, machine, machine_line, markdown_table, write_results
from bench.payloads import ROOT, ScrapeSequence, describe
from harness.ports import free_port

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8,"
    "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
_UP_RE = re.compile(r"^spec_decode_exporter_target_up\{[^}]*\} (\S+)$", re.MULTILINE)
_POLL_RE = re.compile(r"^spec_decode_exporter_poll_duration_seconds\{[^}]*\} (\S+)$", re.MULTILINE)


class StandInVLLM:
    """Serves successive scrapes of an N-engine vLLM 0.32; each request is the next poll's body."""

    def __init__(self, engines: int) -> None:
        self.sequence = ScrapeSequence(engines)
        self.requests = 0
        self.last_body = self.sequence.scrape(0)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, _: web.Request) -> web.Response:
        body = self.sequence.scrape(self.requests)
        self.requests += 1
        self.last_body = body
        return web.Response(text=body, content_type="text/plain", charset="utf-8", headers={"X-Version": "0.0.4"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


async def wait_ready(
    session: aiohttp.ClientSession, base: str, proc: asyncio.subprocess.Process, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"exporter exited with {proc.returncode} before becoming ready")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(base + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"exporter not ready after {timeout:.0f} s")


async def run_one(
    engines: int, seconds: float, interval: str, scrape_every: float, exporter_dir: Path
) -> dict[str, Any]:
    vllm = StandInVLLM(engines)
    await vllm.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stderr = tempfile.TemporaryFile()
    cmd = [
        sys.executable,
        "-m",
        "spec_exporter",
        "--target",
        f"http://127.0.0.1:{vllm.port}",
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--poll.interval",
        interval,
        "--log.level",
        "warn",
    ]
    env = {**os.environ, "PYTHONPATH": str(exporter_dir)}
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=exporter_dir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )
    scrapes: list[dict[str, Any]] = []
    rss_samples: list[tuple[float, int]] = []
    try:
        async with aiohttp.ClientSession() as session:
            try:
                await wait_ready(session, base, proc, timeout=30)
            except RuntimeError as e:
                stderr.seek(0)
                tail = stderr.read().decode(errors="replace").strip()[-2000:]
                raise RuntimeError(f"{e}; its stderr:\n{tail}") from None
            started = time.monotonic()
            cpu0 = cpu_seconds(proc.pid)
            rss0, _ = rss_kib(proc.pid)
            polls0 = vllm.requests
            next_scrape = started
            while (now := time.monotonic()) < started + seconds:
                if proc.returncode is not None:
                    raise RuntimeError(f"exporter exited with {proc.returncode} during the run")
                rss_samples.append((round(now - started, 1), rss_kib(proc.pid)[0]))
                if now >= next_scrape:
                    next_scrape += scrape_every
                    t0 = time.perf_counter()
                    async with session.get(base + "/metrics", headers={"Accept": PROMETHEUS_ACCEPT}) as r:
                        body = await r.text()
                        status = r.status
                    took = time.perf_counter() - t0
                    up = _UP_RE.findall(body)
                    poll = _POLL_RE.findall(body)
                    scrapes.append(
                        {
                            "at": round(now - started, 1),
                            "status": status,
                            "seconds": took,
                            "bytes": len(body.encode()),
                            "up": up[0] if up else None,
                            "poll_duration_seconds": float(poll[0]) if poll else None,
                        }
                    )
                await asyncio.sleep(max(0.0, min(1.0, started + seconds - time.monotonic())))
            wall = time.monotonic() - started
            cpu = cpu_seconds(proc.pid) - cpu0
            rss1, hwm = rss_kib(proc.pid)
            polls = vllm.requests - polls0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await vllm.stop()
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace").strip()
        stderr.close()
    lines, size = describe(vllm.last_body)
    rss_values = [v for _, v in rss_samples]
    return {
        "engines": engines,
        "command": " ".join(cmd[1:]),
        "vllm_scrape_lines": lines,
        "vllm_scrape_bytes": size,
        "seconds": wall,
        "polls": polls,
        "scrapes": scrapes,
        "rss_mib_at_ready": rss0 / 1024,
        "rss_mib_at_end": rss1 / 1024,
        "rss_mib_max_sampled": max(rss_values) / 1024,
        "rss_mib_peak_vmhwm": hwm / 1024,
        "cpu_seconds": cpu,
        "cpu_percent_of_one_core": 100 * cpu / wall,
        "cpu_ms_per_poll": 1000 * cpu / polls if polls else None,
        "scrape_ms_median": 1000 * statistics.median(s["seconds"] for s in scrapes) if scrapes else None,
        "exporter_metrics_bytes": scrapes[-1]["bytes"] if scrapes else None,
        "all_scrapes_up": all(s["status"] == 200 and s["up"] == "1.0" for s in scrapes),
        "exporter_stderr": errors[-2000:],
        "rss_kib_samples": rss_samples,
    }


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "engines",
        "vLLM scrape",
        "polls / s measured",
        "RSS at ready → end (MiB)",
        "peak RSS (MiB)",
        "CPU s",
        "CPU % of one core",
        "CPU ms per poll",
        "own /metrics: bytes, median ms",
    ]
    body = [
        [
            str(r["engines"]),
            f"{r['vllm_scrape_lines']:,} lines, {r['vllm_scrape_bytes'] / 1024:,.0f} KiB",
            f"{r['polls']} / {r['seconds']:.0f}",
            f"{r['rss_mib_at_ready']:.1f} → {r['rss_mib_at_end']:.1f}",
            f"{r['rss_mib_peak_vmhwm']:.1f}",
            f"{r['cpu_seconds']:.2f}",
            f"{r['cpu_percent_of_one_core']:.2f} %",
            f"{r['cpu_ms_per_poll']:.1f}" if r["cpu_ms_per_poll"] is not None else "n/a",
            f"{r['exporter_metrics_bytes']:,}, {r['scrape_ms_median']:.1f}" if r["scrapes"] else "n/a",
        ]
        for r in rows
    ]
    return markdown_table(header, body)


async def amain(args: argparse.Namespace) -> int:
    info = machine()
    print(machine_line(info), flush=True)
    if args.exporter_dir.resolve() != ROOT:
        print(f"exporter run from {args.exporter_dir}", flush=True)
    rows = []
    for n in [int(x) for x in args.engines.split(",") if x.strip()]:
        print(f"  {n} engine(s): measuring for {args.seconds:.0f} s after the first poll ...", flush=True)
        row = await run_one(n, args.seconds, args.interval, args.scrape_every, args.exporter_dir.resolve())
        rows.append(row)
        print(
            f"  {n} engine(s): RSS {row['rss_mib_at_end']:.1f} MiB (peak {row['rss_mib_peak_vmhwm']:.1f}), "
            f"CPU {row['cpu_percent_of_one_core']:.2f} % of a core, {row['polls']} polls, "
            f"scrapes all up: {row['all_scrapes_up']}",
            flush=True,
        )
        if row["exporter_stderr"]:
            print("  exporter stderr (last lines):\n" + row["exporter_stderr"], flush=True)
    print()
    print(table(rows))
    ok = all(r["all_scrapes_up"] for r in rows)
    if not ok:
        print("\nWARNING: some exporter scrapes were not up=1: see the JSON file")
    if not args.no_json:
        path = write_results(
            "resources",
            {
                "machine": info,
                "interval": args.interval,
                "exporter_dir": str(args.exporter_dir),
                "exporter_git": git_state(args.exporter_dir.resolve()),
                "rows": rows,
            },
        )
        print(f"\nraw numbers: {path}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_resources", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="measured time per run (default %(default)s)")
    p.add_argument("--engines", default="1,8", help="engine counts, one exporter run each (default %(default)s)")
    p.add_argument("--interval", default="5s", help="the exporter's --poll.interval (default %(default)s)")
    p.add_argument("--scrape-every", type=float, default=15.0, help="seconds between /metrics scrapes")
    p.add_argument(
        "--exporter-dir",
        type=Path,
        default=ROOT,
        help="run `python -m spec_exporter` from this checkout (default: this repository), "
        "e.g. an export of a given commit: git archive HEAD spec_exporter | tar -x -C DIR",
    )
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/resources-*.json")
    args = p.parse_args(argv)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
