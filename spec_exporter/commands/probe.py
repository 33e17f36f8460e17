"""`spec-exporter probe`: send requests at each temperature and concurrency, and measure what speculation does.

The recipe users are told to run before trusting speculative decoding, as a command. One cell (temperature,
concurrency) at a time, so that when vLLM gives no per-request metrics the increase of its own counters over a
phase belongs to that cell alone. Acceptance does not say whether speculation pays at a load: only a baseline
pool without it, measured on the same grid, does; so speedup, crossover and schedule need `--baseline-target`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp

from spec_exporter.commands.common import add_common_flags, build_settings, config_failed
from spec_exporter.commands.format import table
from spec_exporter.config import ConfigError
from spec_exporter.derive.acceptance import acceptance
from spec_exporter.derive.load import best_k
from spec_exporter.derive.sample import percentiles
from spec_exporter.derive.verdict import ADVICE, verdict
from spec_exporter.fetch import FetchError, fetch_metrics
from spec_exporter.tap.request import NotUnderstood
from spec_exporter.tap.response import spec_result
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
    # vLLM's own per-request TPOT (its mean_itl_ms), when it sent per-request metrics.
    tpot: float | None = None
    # Measured here: first to last content chunk over the tokens after the first. Both pools can give it.
    client_tpot: float | None = None
    tokens: int | None = None
    accepted: int | None = None
    drafted: int | None = None
    steps: int | None = None
    error: str | None = None


VLLM_TPOT = "vLLM per-request metrics"
CLIENT_TPOT = "measured by the probe"


@dataclass
class PhaseResult:
    """One cell of the grid: every request at one temperature with at most `concurrency` in flight."""

    temperature: float
    requests: list[RequestResult] = field(default_factory=list)
    # The increase of vLLM's own spec-decode counters over the phase, when /metrics has them.
    engine: SpecCounters | None = None
    concurrency: int = 1
    seconds: float = 0.0

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.requests if r.ok]

    @property
    def measured(self) -> list[RequestResult]:
        return [r for r in self.requests if r.ok and r.drafted]

    @property
    def tpot_source(self) -> str:
        ok = self.ok
        return VLLM_TPOT if ok and all(r.tpot is not None for r in ok) else CLIENT_TPOT

    def tpots(self, source: str) -> list[float]:
        values = (r.tpot if source == VLLM_TPOT else r.client_tpot for r in self.ok)
        return [v for v in values if v is not None]

    @property
    def output_tokens(self) -> int:
        return sum(r.tokens or 0 for r in self.ok)

    def summary(self, thresholds: Thresholds) -> dict[str, Any]:
        ok = self.ok
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
        tpot = self.tpots(self.tpot_source)
        return {
            "temperature": self.temperature,
            "concurrency": self.concurrency,
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
            "tpot_source": self.tpot_source,
            "output_tokens": self.output_tokens,
            "seconds": self.seconds,
            "output_tokens_per_second": self.output_tokens / self.seconds if self.seconds > 0 else None,
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
    concurrency: tuple[int, ...] = (1,)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    model: str | None = None
    max_tokens: int = 64
    timeout: float = 120.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    baseline_target: str | None = None
    # The configured k (default: the number of `position` series vLLM exports) and the draft cost ratio c.
    num_speculative_tokens: int | None = None
    draft_cost_ratio: float = 0.1


@dataclass
class ProbeRun:
    cells: list[PhaseResult]
    baseline: list[PhaseResult] | None
    warnings: list[str]


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
    width = max(len(s.per_position) for s in specs)
    return SpecCounters(
        drafts=sum(s.drafts for s in specs),
        draft_tokens=sum(s.draft_tokens for s in specs),
        accepted_tokens=sum(s.accepted_tokens for s in specs),
        per_position=tuple(sum(s.per_position[i] for s in specs if i < len(s.per_position)) for i in range(width)),
    )


def _increase(start: SpecCounters | None, end: SpecCounters | None) -> SpecCounters | None:
    if start is None or end is None or len(start.per_position) != len(end.per_position):
        return None
    return SpecCounters(
        drafts=end.drafts - start.drafts,
        draft_tokens=end.draft_tokens - start.draft_tokens,
        accepted_tokens=end.accepted_tokens - start.accepted_tokens,
        per_position=tuple(e - s for s, e in zip(start.per_position, end.per_position, strict=True)),
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
    base: str,
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
            f"{base}/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=settings.timeout)
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
    result.tokens = tokens
    if first is not None and last is not None and tokens is not None and tokens > 1:
        result.client_tpot = (last - first) / (tokens - 1)
    result.tpot = measured.tpot_seconds
    if measured.accepted is not None and measured.drafted is not None:
        result.accepted, result.drafted = measured.accepted, measured.drafted
        result.steps = measured.steps
    return result


async def _run_grid(
    settings: ProbeSettings,
    session: aiohttp.ClientSession,
    base: str,
    progress: Callable[[], None],
    clock: Callable[[], float],
) -> tuple[list[PhaseResult], SpecCounters | None]:
    """Every (concurrency, temperature) cell against `base`, one at a time, lowest concurrency first."""
    before = await _engine_counters(session, base)
    model = settings.model or await _model(session, base)
    cells = []
    for concurrency in settings.concurrency:
        semaphore = asyncio.Semaphore(concurrency)

        async def limited(i: int, temperature: float, semaphore: asyncio.Semaphore = semaphore) -> RequestResult:
            async with semaphore:
                prompt = settings.prompts[i % len(settings.prompts)]
                result = await _one(session, settings, base, model, prompt, temperature, clock)
            progress()
            return result

        for temperature in settings.temperatures:
            start = await _engine_counters(session, base)
            began = clock()
            results = await asyncio.gather(*(limited(i, temperature) for i in range(settings.requests)))
            seconds = clock() - began
            end = await _engine_counters(session, base)
            cells.append(PhaseResult(temperature, list(results), _increase(start, end), concurrency, seconds))
    if all(not r.ok for c in cells for r in c.requests):
        errors = {r.error for c in cells for r in c.requests}
        raise ProbeError(f"every request to {base} failed: {', '.join(sorted(e or '?' for e in errors))}")
    return cells, before


async def run_probe(
    settings: ProbeSettings,
    session: aiohttp.ClientSession,
    *,
    progress: Callable[[int, int], None] = lambda done, total: None,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeRun:
    """The grid on the target, then (when given) the same grid on the baseline; one cell at a time."""
    warnings: list[str] = []
    base = settings.target.rstrip("/")
    grids = 2 if settings.baseline_target else 1
    total = grids * len(settings.concurrency) * len(settings.temperatures) * settings.requests
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        progress(done, total)

    cells, before = await _run_grid(settings, session, base, step, clock)
    if before is None:
        warnings.append(
            f"{base}/metrics has no vllm:spec_decode_* counters: speculative decoding looks off "
            "(or /metrics is unreachable); acceptance cannot be measured from the engine."
        )
    if before is not None and not any(c.measured for c in cells):
        warnings.append(
            "vLLM sent no per-request speculative-decoding metrics; acceptance comes from its counters "
            "per phase (no per-request percentiles). Start vLLM with "
            "--per-request-spec-decode-metrics summary."
        )
    baseline = None
    if settings.baseline_target:
        baseline_base = settings.baseline_target.rstrip("/")
        baseline, _ = await _run_grid(settings, session, baseline_base, step, clock)
        if any(c.engine is not None and c.engine.drafts > 0 for c in baseline):
            warnings.append(
                f"the baseline {baseline_base} has speculative decoding on (its spec-decode counters move): "
                "the comparison is then between two speculative pools."
            )
    return ProbeRun(cells, baseline, warnings)


def _shared_source(cells: Sequence[PhaseResult]) -> str:
    """vLLM's TPOT when every cell on both sides has it; else the probe's own clock on both sides."""
    return VLLM_TPOT if cells and all(c.tpot_source == VLLM_TPOT for c in cells) else CLIENT_TPOT


def _p50(values: list[float]) -> float | None:
    return _pct(values, 0.5)


def _tpot_speedup(spec: Sequence[PhaseResult], base: Sequence[PhaseResult]) -> tuple[float | None, str]:
    """Baseline TPOT p50 / speculative TPOT p50 over all requests of the cells, on one source for both."""
    source = _shared_source([*spec, *base])
    s = _p50([v for c in spec for v in c.tpots(source)])
    b = _p50([v for c in base for v in c.tpots(source)])
    return (b / s if s is not None and b is not None and s > 0 else None), source


def compare_cell(spec: PhaseResult, base: PhaseResult) -> dict[str, Any]:
    speedup, source = _tpot_speedup([spec], [base])
    spec_rate = spec.output_tokens / spec.seconds if spec.seconds > 0 else None
    base_rate = base.output_tokens / base.seconds if base.seconds > 0 else None
    return {
        "tpot_speedup": speedup,
        "tpot_source": source,
        "throughput_ratio": spec_rate / base_rate if spec_rate is not None and base_rate else None,
    }


def crossovers(rows: Sequence[dict[str, Any]], temperatures: Sequence[float]) -> list[dict[str, Any]]:
    """Per temperature, the lowest concurrency at which the TPOT speedup is 1 or less (None: it always paid)."""
    out = []
    for t in temperatures:
        measured = sorted(
            (r for r in rows if r["temperature"] == t and r["tpot_speedup"] is not None),
            key=lambda r: r["concurrency"],
        )
        stops = next((r["concurrency"] for r in measured if r["tpot_speedup"] <= 1.0), None)
        out.append(
            {"temperature": t, "concurrency": stops, "measured_concurrencies": [r["concurrency"] for r in measured]}
        )
    return out


def suggest_schedule(
    cells: Sequence[PhaseResult], baseline: Sequence[PhaseResult], configured_k: int | None, draft_cost_ratio: float
) -> tuple[list[list[int]] | None, list[dict[str, Any]]]:
    """A `num_speculative_tokens_per_batch_size` schedule from the measured speedup at each concurrency.

    A concurrency level stands for the batch size it keeps running. Where the pooled TPOT speedup (all
    temperatures, as probed) is above 1 speculation stays on, at the best k the per-position acceptance measured
    there models (the configured k when it models none); elsewhere k = 0. Each level's k covers batch sizes from
    it up to the next level; vLLM carries the last range's k on to max_num_seqs. Adjacent equal ranges merge.
    """
    basis: list[dict[str, Any]] = []
    levels: list[tuple[int, int]] = []  # (concurrency, k)
    for concurrency in sorted({c.concurrency for c in cells}):
        spec = [c for c in cells if c.concurrency == concurrency]
        base = [c for c in baseline if c.concurrency == concurrency]
        speedup, source = _tpot_speedup(spec, base)
        if speedup is None:
            continue
        engines = [c.engine for c in spec if c.engine is not None]
        per_position = (
            tuple(sum(col) for col in zip(*(e.per_position for e in engines), strict=True)) if engines else ()
        )
        k = configured_k or len(per_position) or None
        if k is None:
            return None, basis
        best = best_k(per_position, sum(e.drafts for e in engines), draft_cost_ratio) if per_position else None
        if speedup > 1.0:
            chosen = best.k if best is not None and best.k > 0 else k
        else:
            chosen = 0
        basis.append(
            {
                "concurrency": concurrency,
                "tpot_speedup": speedup,
                "tpot_source": source,
                "modelled_best_k": best.k if best is not None else None,
                "k": min(chosen, k),
            }
        )
        levels.append((concurrency, min(chosen, k)))
    if not levels:
        return None, basis
    ranges: list[list[int]] = []
    for i, (concurrency, level_k) in enumerate(levels):
        first = 1 if i == 0 else concurrency
        last = levels[i + 1][0] - 1 if i + 1 < len(levels) else concurrency
        if ranges and ranges[-1][2] == level_k:
            ranges[-1][1] = last
        else:
            ranges.append([first, last, level_k])
    return ranges, basis


_BASELINE_FIELDS = (
    "requests",
    "failed",
    "ttft_seconds",
    "tpot_seconds",
    "tpot_source",
    "output_tokens",
    "seconds",
    "output_tokens_per_second",
)


def probe_document(settings: ProbeSettings, run: ProbeRun) -> dict[str, Any]:
    """Everything the probe found, as the JSON it prints; the table and the HTML report are views of it."""
    rows = []
    by_cell = {(c.concurrency, c.temperature): c for c in (run.baseline or [])}
    for cell in run.cells:
        row = cell.summary(settings.thresholds)
        base = by_cell.get((cell.concurrency, cell.temperature))
        if base is not None:
            b = base.summary(settings.thresholds)
            row["baseline"] = {k: b[k] for k in _BASELINE_FIELDS}
            row |= compare_cell(cell, base)
        else:
            row |= {"baseline": None, "tpot_speedup": None, "throughput_ratio": None}
        rows.append(row)
    schedule: list[list[int]] | None = None
    basis: list[dict[str, Any]] = []
    if run.baseline is not None:
        configured_k = settings.num_speculative_tokens
        schedule, basis = suggest_schedule(run.cells, run.baseline, configured_k, settings.draft_cost_ratio)
    warnings = list(run.warnings)
    if run.baseline is None:
        warnings.append(NO_BASELINE)
    return {
        "target": settings.target,
        "baseline_target": settings.baseline_target,
        "requests_per_cell": settings.requests,
        "concurrency": list(settings.concurrency),
        "temperatures": list(settings.temperatures),
        "max_tokens": settings.max_tokens,
        "thresholds": {
            "disable_below": settings.thresholds.disable_below,
            "beneficial_at": settings.thresholds.beneficial_at,
        },
        "draft_cost_ratio": settings.draft_cost_ratio,
        "cells": rows,
        "crossover": crossovers(rows, settings.temperatures) if run.baseline is not None else [],
        "suggested_speculative_config": (
            {"num_speculative_tokens_per_batch_size": schedule} if schedule is not None else None
        ),
        "schedule_basis": basis,
        "warnings": warnings,
    }


NO_BASELINE = (
    "no baseline: the verdicts judge acceptance alone and ignore load, yet the same acceptance can be a speedup "
    "at low concurrency and a slowdown at high. Add --baseline-target URL (the same model without speculative "
    "decoding) to measure the speedup at each concurrency, its crossover and a batch-size schedule."
)


def _schedule_json(doc: dict[str, Any]) -> str | None:
    config = doc["suggested_speculative_config"]
    return json.dumps(config, separators=(", ", ": ")) if config is not None else None


def render_table(doc: dict[str, Any]) -> str:
    from spec_exporter.commands.probe_report import cell_values

    with_baseline = doc["baseline_target"] is not None
    header = ["conc", "temp", "acceptance", "p10", "p50", "p90", "accept len", "TTFT p50", "TTFT p99"]
    header += ["TPOT p50", "TPOT p99", "tok/s"]
    if with_baseline:
        header += ["base TPOT p50", "base tok/s", "TPOT speedup", "tok/s ratio"]
    header += ["failed", "verdict"]
    rows_out = [header]
    rows_out += [cell_values(s, with_baseline) for s in doc["cells"]]
    against = f" against baseline {doc['baseline_target']}" if with_baseline else ""
    lines = [
        f"spec-exporter probe: {doc['target']}{against}, {doc['requests_per_cell']} requests per cell"
        f" (concurrency {', '.join(map(str, doc['concurrency']))}); TTFT/TPOT in ms",
        "",
    ]
    lines += table(rows_out)
    lines.append("")
    several = len(doc["concurrency"]) > 1
    # One line per temperature and verdict, the advice once per verdict: a grid repeats them otherwise.
    seen: dict[tuple[float, str, str], list[int]] = {}
    for s in doc["cells"]:
        seen.setdefault((s["temperature"], s["verdict"], s["acceptance_source"]), []).append(s["concurrency"])
    advice = {s["verdict"]: s["advice"] for s in doc["cells"]}
    for (temperature, verdict_, source), levels in seen.items():
        at = f" at concurrency {', '.join(map(str, levels))}" if several else ""
        lines.append(f"T={temperature:g}: {verdict_}{at} ({source}).")
    lines += [f"{v}: {a}" for v, a in advice.items()]
    if with_baseline:
        lines.append("")
        for c in doc["crossover"]:
            if c["concurrency"] is not None:
                where = f"stops paying at concurrency {c['concurrency']}"
            elif c["measured_concurrencies"]:
                where = f"pays at every concurrency measured (up to {max(c['measured_concurrencies'])})"
            else:
                where = "no TPOT measured on both pools"
            lines.append(f"crossover T={c['temperature']:g}: {where}")
        schedule = _schedule_json(doc)
        if schedule is not None:
            lines += [
                "",
                "suggested speculative_config entry (batch size ≈ concurrency; merge into --speculative-config):",
                schedule,
            ]
    lines += [f"warning: {w}" for w in doc["warnings"]]
    return "\n".join(lines) + "\n"


def render_json(doc: dict[str, Any]) -> str:
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
    settings: ProbeSettings,
    output: str,
    *,
    report: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    try:
        async with aiohttp.ClientSession() as session:
            run = await run_probe(settings, session, progress=progress_bar(err))
    except ProbeError as e:
        err.write(f"spec-exporter probe: {e}\n")
        return EXIT_FAILED
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        err.write(f"spec-exporter probe: cannot reach {settings.target}: {type(e).__name__}: {e}\n")
        return EXIT_FAILED
    doc = probe_document(settings, run)
    out.write(render_json(doc) if output == "json" else render_table(doc))
    if report is not None:
        from spec_exporter.commands.probe_report import render_html

        try:
            with open(report, "w", encoding="utf-8") as f:
                f.write(render_html(doc))
        except OSError as e:
            err.write(f"spec-exporter probe: cannot write the report {report}: {e.strerror or e}\n")
            return EXIT_FAILED
    return EXIT_OK


def probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spec-exporter probe",
        description="Send requests at each temperature and each concurrency to a vLLM and report, per cell, "
        "acceptance (P10/P50/P90 across requests when vLLM gives per-request metrics, else from its counters over "
        "that cell's phase), mean acceptance length, TTFT and TPOT p50/p99, output tokens per second, and the "
        "verdict with advice. With --baseline-target, the same grid on a pool without speculative decoding gives "
        "the measured TPOT speedup and throughput ratio per cell, the crossover concurrency per temperature and a "
        "suggested num_speculative_tokens_per_batch_size schedule. Thresholds and the draft cost ratio come from "
        "--config.file when given. Exit status 0 when the probe ran, 1 when it could not.",
    )
    p.add_argument("--target", required=True, metavar="URL", help="vLLM base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--baseline-target",
        metavar="URL",
        help="the same model served without speculative decoding: run the same grid there and compare",
    )
    p.add_argument(
        "--temperatures",
        default="0,0.4,0.8,1.0",
        metavar="LIST",
        help="comma-separated temperatures, one phase each (default %(default)s)",
    )
    p.add_argument("--requests", type=int, default=20, metavar="N", help="requests per cell (default 20)")
    p.add_argument(
        "--concurrency",
        default="1",
        metavar="LIST",
        help="comma-separated requests in flight; every temperature runs at each (default %(default)s)",
    )
    p.add_argument("--prompts", metavar="FILE", help="prompts, one per line (default: a few built-in ones)")
    p.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    p.add_argument("--max-tokens", type=int, default=64, metavar="N", help="max_tokens per request (default 64)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="report format")
    p.add_argument("--report", metavar="FILE.html", help="also write a self-contained HTML report with charts")
    add_common_flags(p)
    return p


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        return ()
    return values


def probe_settings(args: argparse.Namespace) -> ProbeSettings:
    problems = []
    try:
        temperatures = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    except ValueError:
        temperatures = ()
    if not temperatures or any(not 0 <= t <= 2 for t in temperatures):
        problems.append("--temperatures: a comma-separated list of numbers in [0, 2]")
    concurrency = _int_list(args.concurrency)
    if not concurrency or any(c < 1 for c in concurrency) or len(set(concurrency)) != len(concurrency):
        problems.append("--concurrency: a comma-separated list of distinct whole numbers, each at least 1")
        concurrency = (1,)
    if args.requests < 1:
        problems.append("--requests: at least 1")
    elif args.requests < max(concurrency):
        problems.append(
            f"--requests: at least the largest --concurrency ({max(concurrency)}), or that level never fills up"
        )
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts = tuple(line.rstrip("\n") for line in f if line.strip())
        except OSError as e:
            problems.append(f"--prompts: {e.strerror or e}")
        if not prompts:
            problems.append("--prompts: the file has no prompts")
    baselines = [args.baseline_target] if args.baseline_target else []
    try:
        config = build_settings(args.config_file, targets=[args.target], baselines=baselines, only_these_targets=True)
        params = config.derive_params(config.targets[0])
        thresholds, k, cost = params.thresholds, params.num_speculative_tokens, params.draft_cost_ratio
    except ConfigError as e:
        problems += e.details
        thresholds, k, cost = Thresholds(), None, 0.1
    if problems:
        raise ConfigError(problems)
    return ProbeSettings(
        target=args.target,
        temperatures=temperatures,
        requests=args.requests,
        concurrency=tuple(sorted(concurrency)),
        prompts=prompts,
        model=args.model,
        max_tokens=args.max_tokens,
        thresholds=thresholds,
        baseline_target=args.baseline_target,
        num_speculative_tokens=k,
        draft_cost_ratio=cost,
    )


def probe(argv: Sequence[str]) -> int:
    from spec_exporter.logs import setup_logging

    args = probe_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        settings = probe_settings(args)
    except ConfigError as e:
        return config_failed(e)
    return asyncio.run(probe_main(settings, args.output, report=args.report))
