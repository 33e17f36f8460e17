"""`spec-exporter probe`: send requests at each temperature and measure what speculative decoding does for them.

The recipe users are told to run before trusting speculative decoding, as a command. One temperature at a time,
so that when vLLM gives no per-request metrics the increase of its own counters over a phase belongs to that
temperature alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import aiohttp

from spec_exporter.commands.common import add_common_flags, build_settings, config_failed
from spec_exporter.commands.format import ms, number, table
from spec_exporter.config import ConfigError
from spec_exporter.derive.acceptance import acceptance
from spec_exporter.derive.sample import percentiles
from spec_exporter.derive.verdict import ADVICE, verdict
from spec_exporter.fetch import FetchError, fetch_metrics
from spec_exporter.join.request import NotUnderstood
from spec_exporter.join.response import spec_result
from spec_exporter.types import SpecCounters, Thresholds
from spec_exporter.vllm.parse import ExpositionParser, ParseError

DEFAULT_PROMPTS = (
    "Explain what a hash table is in two sentences.",
    "Write a short poem about the sea.",
    "List three uses of a paperclip.",
    "Summarise the water cycle for a child.",
    "What is the capital of France? Answer in one word.",
)
EXIT_OK = 0
EXIT_FAILED = 1


class ProbeError(Exception):
    """The probe could not run: the message says why, for the user."""


@dataclass
class RequestResult:
    ok: bool
    ttft: float | None = None
    tpot: float | None = None
    accepted: int | None = None
    drafted: int | None = None
    steps: int | None = None
    error: str | None = None


@dataclass
class PhaseResult:
    temperature: float
    requests: list[RequestResult] = field(default_factory=list)
    # The increase of vLLM's own spec-decode counters over the phase, when /metrics has them.
    engine: SpecCounters | None = None

    @property
    def measured(self) -> list[RequestResult]:
        return [r for r in self.requests if r.ok and r.drafted]

    def summary(self, thresholds: Thresholds) -> dict[str, Any]:
        ok = [r for r in self.requests if r.ok]
        rates = [r.accepted / r.drafted for r in self.measured if r.accepted is not None and r.drafted]
        if self.measured:
            counted = SpecCounters(
                drafts=sum(r.steps or 0 for r in self.measured),
                draft_tokens=sum(r.drafted or 0 for r in self.measured),
                accepted_tokens=sum(r.accepted or 0 for r in self.measured),
            )
            source = "per-request metrics"
        elif self.engine is not None:
            counted = self.engine
            source = "vLLM counters over the phase"
        else:
            counted = SpecCounters(0.0, 0.0, 0.0)
            source = "none"
        a = acceptance(counted)
        v = verdict(a.rate, a.draft_tokens, thresholds)
        ttft = [r.ttft for r in ok if r.ttft is not None]
        tpot = [r.tpot for r in ok if r.tpot is not None]
        return {
            "temperature": self.temperature,
            "requests": len(self.requests),
            "failed": len(self.requests) - len(ok),
            "acceptance_source": source,
            "acceptance_rate": a.rate,
            "acceptance_percentiles": {f"p{int(q * 100)}": v for q, v in percentiles(rates).items()},
            "accepted_tokens": a.accepted_tokens,
            "draft_tokens": a.draft_tokens,
            "mean_acceptance_length": a.mean_length,
            "ttft_seconds": {"p50": _pct(ttft, 0.5), "p99": _pct(ttft, 0.99)},
            "tpot_seconds": {"p50": _pct(tpot, 0.5), "p99": _pct(tpot, 0.99)},
            "verdict": v.value,
            "advice": ADVICE[v],
        }


def _pct(values: list[float], q: float) -> float | None:
    return percentiles(values, (q,))[q] if values else None


@dataclass(frozen=True)
class ProbeSettings:
    target: str
    temperatures: tuple[float, ...] = (0.0, 0.4, 0.8, 1.0)
    requests: int = 20
    concurrency: int = 1
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    model: str | None = None
    max_tokens: int = 64
    timeout: float = 120.0
    thresholds: Thresholds = field(default_factory=Thresholds)


_METRICS_TIMEOUT = 10.0
_MAX_METRICS_BYTES = 16 * 1024**2


async def _engine_counters(session: aiohttp.ClientSession, base: str) -> SpecCounters | None:
    """vLLM's spec-decode counters summed over its engines, read the way the poller reads them."""
    try:
        text = await fetch_metrics(session, f"{base}/metrics", _METRICS_TIMEOUT, _MAX_METRICS_BYTES)
        snap = ExpositionParser().parse(text, 0.0)
    except (FetchError, ParseError):
        return None
    specs = [e.spec for e in snap.engines.values() if e.spec is not None]
    if not specs:
        return None
    return SpecCounters(
        drafts=sum(s.drafts for s in specs),
        draft_tokens=sum(s.draft_tokens for s in specs),
        accepted_tokens=sum(s.accepted_tokens for s in specs),
    )


def _increase(start: SpecCounters | None, end: SpecCounters | None) -> SpecCounters | None:
    if start is None or end is None:
        return None
    return SpecCounters(
        drafts=end.drafts - start.drafts,
        draft_tokens=end.draft_tokens - start.draft_tokens,
        accepted_tokens=end.accepted_tokens - start.accepted_tokens,
    )


async def _model(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(f"{base}/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as r:
        if r.status != 200:
            raise ProbeError(f"GET {base}/v1/models answered HTTP {r.status}; pass --model")
        data = (await r.json()).get("data") or []
    if not data:
        raise ProbeError(f"{base} serves no model; pass --model")
    return str(data[0]["id"])


async def _one(
    session: aiohttp.ClientSession,
    settings: ProbeSettings,
    model: str,
    prompt: str,
    temperature: float,
    clock: Callable[[], float],
) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": temperature,
        "max_tokens": settings.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = clock()
    first = last = None
    usage: dict[str, Any] | None = None
    try:
        async with session.post(
            f"{settings.target}/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=settings.timeout)
        ) as r:
            if r.status != 200:
                return RequestResult(ok=False, error=f"HTTP {r.status}: {(await r.text())[:200]}")
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("choices"):
                    last = clock()
                    first = first or last
                elif isinstance(chunk.get("usage"), dict):
                    usage = chunk
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return RequestResult(ok=False, error=type(e).__name__)
    result = RequestResult(ok=True, ttft=None if first is None else first - started)
    if usage is None:
        return result
    # The tap's reader of per-request metrics: the same numbers, read the same way, as the exporter counts.
    try:
        measured = spec_result(usage)
    except NotUnderstood:
        return result
    tokens = measured.completion_tokens
    if measured.tpot_seconds is not None:
        result.tpot = measured.tpot_seconds
    elif first is not None and last is not None and tokens is not None and tokens > 1:
        result.tpot = (last - first) / (tokens - 1)
    if measured.accepted is not None and measured.drafted is not None:
        result.accepted, result.drafted = measured.accepted, measured.drafted
        result.steps = measured.steps
    return result


async def run_probe(
    settings: ProbeSettings,
    session: aiohttp.ClientSession,
    *,
    progress: Callable[[int, int], None] = lambda done, total: None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[PhaseResult], list[str]]:
    """Every temperature's phase in turn; returns the phases and the warnings to show."""
    warnings: list[str] = []
    base = settings.target.rstrip("/")
    settings = replace(settings, target=base)
    before = await _engine_counters(session, base)
    if before is None:
        warnings.append(
            f"{base}/metrics has no vllm:spec_decode_* counters: speculative decoding looks off "
            "(or /metrics is unreachable); acceptance cannot be measured from the engine."
        )
    model = settings.model or await _model(session, base)
    total = len(settings.temperatures) * settings.requests
    done = 0
    phases = []
    semaphore = asyncio.Semaphore(settings.concurrency)

    async def limited(i: int, temperature: float) -> RequestResult:
        nonlocal done
        async with semaphore:
            result = await _one(
                session, settings, model, settings.prompts[i % len(settings.prompts)], temperature, clock
            )
        done += 1
        progress(done, total)
        return result

    for temperature in settings.temperatures:
        start = await _engine_counters(session, base)
        results = await asyncio.gather(*(limited(i, temperature) for i in range(settings.requests)))
        end = await _engine_counters(session, base)
        phases.append(PhaseResult(temperature, list(results), _increase(start, end)))
    if all(not r.ok for p in phases for r in p.requests):
        errors = {r.error for p in phases for r in p.requests}
        raise ProbeError(f"every request to {base} failed: {', '.join(sorted(e or '?' for e in errors))}")
    if before is not None and not any(p.measured for p in phases):
        warnings.append(
            "vLLM sent no per-request speculative-decoding metrics; acceptance comes from its counters "
            "per phase (no per-request percentiles). Start vLLM with "
            "--per-request-spec-decode-metrics summary."
        )
    return phases, warnings


def render_table(settings: ProbeSettings, phases: Sequence[PhaseResult], warnings: Sequence[str]) -> str:
    rows = [s for s in (p.summary(settings.thresholds) for p in phases)]
    header = [
        "temperature",
        "acceptance",
        "p10",
        "p50",
        "p90",
        "accept len",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "failed",
        "verdict",
    ]
    rows_out = [header]
    for s in rows:
        pct = s["acceptance_percentiles"]
        rows_out.append(
            [
                f"{s['temperature']:g}",
                number(s["acceptance_rate"], 3),
                number(pct.get("p10"), 2),
                number(pct.get("p50"), 2),
                number(pct.get("p90"), 2),
                number(s["mean_acceptance_length"], 2),
                ms(s["ttft_seconds"]["p50"]),
                ms(s["ttft_seconds"]["p99"]),
                ms(s["tpot_seconds"]["p50"]),
                ms(s["tpot_seconds"]["p99"]),
                str(s["failed"]),
                s["verdict"],
            ]
        )
    lines = [
        f"spec-exporter probe: {settings.target}, {settings.requests} requests per temperature"
        f" (concurrency {settings.concurrency}); TTFT/TPOT in ms",
        "",
    ]
    lines += table(rows_out)
    lines.append("")
    for s in rows:
        lines.append(f"T={s['temperature']:g}: {s['verdict']} ({s['acceptance_source']}). {s['advice']}")
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def render_json(settings: ProbeSettings, phases: Sequence[PhaseResult], warnings: Sequence[str]) -> str:
    doc = {
        "target": settings.target,
        "requests_per_temperature": settings.requests,
        "concurrency": settings.concurrency,
        "temperatures": [p.summary(settings.thresholds) for p in phases],
        "warnings": list(warnings),
    }
    return json.dumps(doc, indent=2) + "\n"


def progress_bar(stream: TextIO) -> Callable[[int, int], None]:
    """A one-line progress bar on a terminal; nothing when the output is piped."""
    if not stream.isatty():
        return lambda done, total: None

    def show(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / total) if total else width
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} requests")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


async def probe_main(
    settings: ProbeSettings, output: str, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    try:
        async with aiohttp.ClientSession() as session:
            phases, warnings = await run_probe(settings, session, progress=progress_bar(err))
    except ProbeError as e:
        err.write(f"spec-exporter probe: {e}\n")
        return EXIT_FAILED
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        err.write(f"spec-exporter probe: cannot reach {settings.target}: {type(e).__name__}: {e}\n")
        return EXIT_FAILED
    out.write(render_json(settings, phases, warnings) if output == "json" else render_table(settings, phases, warnings))
    return EXIT_OK


def probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spec-exporter probe",
        description="Send requests at each temperature to a vLLM and report, per temperature, acceptance "
        "(P10/P50/P90 across requests when vLLM gives per-request metrics, else from its counters over that "
        "temperature's phase), mean acceptance length, TTFT and TPOT p50/p99, and the verdict with advice. "
        "Thresholds come from --config.file when given. Exit status 0 when the probe ran, 1 when it could not.",
    )
    p.add_argument("--target", required=True, metavar="URL", help="vLLM base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--temperatures",
        default="0,0.4,0.8,1.0",
        metavar="LIST",
        help="comma-separated temperatures, one phase each (default %(default)s)",
    )
    p.add_argument("--requests", type=int, default=20, metavar="N", help="requests per temperature (default 20)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="requests in flight (default 1)")
    p.add_argument("--prompts", metavar="FILE", help="prompts, one per line (default: a few built-in ones)")
    p.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    p.add_argument("--max-tokens", type=int, default=64, metavar="N", help="max_tokens per request (default 64)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="report format")
    add_common_flags(p)
    return p


def probe_settings(args: argparse.Namespace) -> ProbeSettings:
    problems = []
    try:
        temperatures = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    except ValueError:
        temperatures = ()
    if not temperatures or any(not 0 <= t <= 2 for t in temperatures):
        problems.append("--temperatures: a comma-separated list of numbers in [0, 2]")
    if args.requests < 1:
        problems.append("--requests: at least 1")
    if args.concurrency < 1:
        problems.append("--concurrency: at least 1")
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts = tuple(line.rstrip("\n") for line in f if line.strip())
        except OSError as e:
            problems.append(f"--prompts: {e.strerror or e}")
        if not prompts:
            problems.append("--prompts: the file has no prompts")
    try:
        thresholds = build_settings(args.config_file, targets=[args.target], only_these_targets=True).thresholds
    except ConfigError as e:
        problems += e.details
        thresholds = Thresholds()
    if problems:
        raise ConfigError(problems)
    return ProbeSettings(
        target=args.target,
        temperatures=temperatures,
        requests=args.requests,
        concurrency=args.concurrency,
        prompts=prompts,
        model=args.model,
        max_tokens=args.max_tokens,
        thresholds=thresholds,
    )


def probe(argv: Sequence[str]) -> int:
    from spec_exporter.logs import setup_logging

    args = probe_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        settings = probe_settings(args)
    except ConfigError as e:
        return config_failed(e)
    return asyncio.run(probe_main(settings, args.output))
