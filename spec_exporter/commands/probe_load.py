"""The probe's load generator: one cell (temperature, concurrency) at a time against a vLLM, and what came back.

One cell at a time, so that when vLLM gives no per-request metrics the increase of its own counters over a phase
belongs to that cell alone. Engine counters are read and differenced by the exporter's own code (the parser,
`sum_spec`, `spec_increase`), so the probe and the exporter count alike.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from spec_exporter.derive.acceptance import sum_spec
from spec_exporter.fetch import FetchError, fetch_metrics
from spec_exporter.tap.request import NotUnderstood
from spec_exporter.tap.response import spec_result
from spec_exporter.types import DEFAULT_DRAFT_COST_RATIO, CostProfile, SpecCounters, Thresholds
from spec_exporter.vllm.parse import ExpositionParser, ParseError
from spec_exporter.window import spec_increase

DEFAULT_PROMPTS = (
    "Explain what a hash table is in two sentences.",
    "Write a short poem about the sea.",
    "List three uses of a paperclip.",
    "Summarise the water cycle for a child.",
    "What is the capital of France? Answer in one word.",
)


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
    # The workload class the cell's requests were sent as (`--workload NAME=FILE`); None without classes.
    workload: str | None = None

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
    draft_cost_ratio: float = DEFAULT_DRAFT_COST_RATIO
    # Where to write the calibration profile measured against the baseline (`--write-profile`), and its labels.
    write_profile: str | None = None
    hardware: str | None = None
    draft_model: str | None = None
    # The profile configured (speculation.cost_profile), to read the cells' step cost from when there is no baseline.
    cost_profile: CostProfile | None = None
    # (class name, its prompts) per `--workload NAME=FILE`: each runs the grid as its own class, sending the class
    # in `workload_header` (the tap's tap.workload_header), so one probe compares e.g. a code and a chat workload.
    workloads: tuple[tuple[str, tuple[str, ...]], ...] = ()
    workload_header: str = "x-workload"


@dataclass
class ProbeRun:
    cells: list[PhaseResult]
    baseline: list[PhaseResult] | None
    warnings: list[str]
    # The served model name the target answered as (the calibration profile is for it).
    model: str | None = None


_METRICS_TIMEOUT = 10.0
_MAX_METRICS_BYTES = 16 * 1024**2


async def _engine_counters(session: aiohttp.ClientSession, base: str) -> SpecCounters | None:
    """vLLM's spec-decode counters summed over its engines, read the way the poller reads them."""
    try:
        text = await fetch_metrics(session, f"{base}/metrics", _METRICS_TIMEOUT, _MAX_METRICS_BYTES)
        snap = ExpositionParser().parse(text, 0.0)
    except (FetchError, ParseError):
        return None
    return sum_spec([e.spec for e in snap.engines.values() if e.spec is not None])


def _increase(start: SpecCounters | None, end: SpecCounters | None) -> SpecCounters | None:
    # A restart in between would show as counters going down; positions changing means another vLLM answered.
    if start is None or end is None or len(start.per_position) != len(end.per_position):
        return None
    return spec_increase(end, start)


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
    workload: str | None = None,
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
            f"{base}/v1/chat/completions",
            json=body,
            headers={settings.workload_header: workload} if workload is not None else None,
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
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
) -> tuple[list[PhaseResult], SpecCounters | None, str]:
    """Every (workload, concurrency, temperature) cell against `base`, one at a time, lowest concurrency first."""
    before = await _engine_counters(session, base)
    model = settings.model or await _model(session, base)
    cells = []
    for workload, prompts in settings.workloads or ((None, settings.prompts),):
        for concurrency in settings.concurrency:
            semaphore = asyncio.Semaphore(concurrency)

            async def limited(
                i: int,
                temperature: float,
                semaphore: asyncio.Semaphore = semaphore,
                prompts: tuple[str, ...] = prompts,
                workload: str | None = workload,
            ) -> RequestResult:
                async with semaphore:
                    prompt = prompts[i % len(prompts)]
                    result = await _one(session, settings, base, model, prompt, temperature, clock, workload)
                progress()
                return result

            for temperature in settings.temperatures:
                start = await _engine_counters(session, base)
                began = clock()
                results = await asyncio.gather(*(limited(i, temperature) for i in range(settings.requests)))
                seconds = clock() - began
                end = await _engine_counters(session, base)
                cells.append(
                    PhaseResult(temperature, list(results), _increase(start, end), concurrency, seconds, workload)
                )
    if all(not r.ok for c in cells for r in c.requests):
        errors = {r.error for c in cells for r in c.requests}
        raise ProbeError(f"every request to {base} failed: {', '.join(sorted(e or '?' for e in errors))}")
    return cells, before, model


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
    classes = max(1, len(settings.workloads))
    total = grids * classes * len(settings.concurrency) * len(settings.temperatures) * settings.requests
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        progress(done, total)

    cells, before, model = await _run_grid(settings, session, base, step, clock)
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
        baseline, _, _ = await _run_grid(settings, session, baseline_base, step, clock)
        if any(c.engine is not None and c.engine.drafts > 0 for c in baseline):
            warnings.append(
                f"the baseline {baseline_base} has speculative decoding on (its spec-decode counters move): "
                "the comparison is then between two speculative pools."
            )
    return ProbeRun(cells, baseline, warnings, model)
