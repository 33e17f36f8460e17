"""`spec-exporter probe`: send requests at each temperature and measure what speculative decoding does for them.

The recipe users are told to run before trusting speculative decoding, as a command. One temperature at a time,
so that when vLLM gives no per-request metrics the increase of its own counters over a phase belongs to that
temperature alone.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp

from spec_exporter.derive.sample import percentiles
from spec_exporter.derive.verdict import ADVICE, Thresholds, verdict
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
    # vLLM's own counters over the phase: (accepted, drafted, drafts), when /metrics has them.
    engine: tuple[float, float, float] | None = None

    @property
    def measured(self) -> list[RequestResult]:
        return [r for r in self.requests if r.ok and r.drafted]

    def summary(self, thresholds: Thresholds) -> dict[str, Any]:
        ok = [r for r in self.requests if r.ok]
        rates = [r.accepted / r.drafted for r in self.measured if r.accepted is not None and r.drafted]
        if self.measured:
            accepted = sum(r.accepted or 0 for r in self.measured)
            drafted = sum(r.drafted or 0 for r in self.measured)
            steps = sum(r.steps or 0 for r in self.measured)
            source = "per-request metrics"
        elif self.engine is not None:
            accepted, drafted, steps = self.engine
            source = "vLLM counters over the phase"
        else:
            accepted = drafted = steps = 0
            source = "none"
        rate = accepted / drafted if drafted else None
        v = verdict(rate, drafted, thresholds)
        ttft = [r.ttft for r in ok if r.ttft is not None]
        tpot = [r.tpot for r in ok if r.tpot is not None]
        return {
            "temperature": self.temperature,
            "requests": len(self.requests),
            "failed": len(self.requests) - len(ok),
            "acceptance_source": source,
            "acceptance_rate": rate,
            "acceptance_percentiles": {f"p{int(q * 100)}": v for q, v in percentiles(rates).items()},
            "accepted_tokens": accepted,
            "draft_tokens": drafted,
            "mean_acceptance_length": 1 + accepted / steps if steps else None,
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


async def _engine_counters(session: aiohttp.ClientSession, base: str) -> tuple[float, float, float] | None:
    try:
        async with session.get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
            text = await r.text()
        snap = ExpositionParser().parse(text, 0.0)
    except (aiohttp.ClientError, TimeoutError, ParseError):
        return None
    specs = [e.spec for e in snap.engines.values() if e.spec is not None]
    if not specs:
        return None
    return (sum(s.accepted_tokens for s in specs), sum(s.draft_tokens for s in specs), sum(s.drafts for s in specs))


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
    tokens = (usage or {}).get("usage", {}).get("completion_tokens")
    metrics = (usage or {}).get("metrics") or {}
    if isinstance(metrics.get("mean_itl_ms"), int | float):
        result.tpot = metrics["mean_itl_ms"] / 1000
    elif first is not None and last is not None and isinstance(tokens, int) and tokens > 1:
        result.tpot = (last - first) / (tokens - 1)
    spec = metrics.get("speculative_decoding") or {}
    if isinstance(spec.get("num_draft_tokens"), int):
        result.accepted = int(spec.get("num_accepted_draft_tokens", 0))
        result.drafted = int(spec["num_draft_tokens"])
        result.steps = int(spec.get("num_spec_steps", 0))
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
    settings = ProbeSettings(**{**settings.__dict__, "target": base})
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
        engine = None
        if start is not None and end is not None:
            engine = (end[0] - start[0], end[1] - start[1], end[2] - start[2])
        phases.append(PhaseResult(temperature, list(results), engine))
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


def _cell(v: float | None, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _ms(seconds: float | None) -> str:
    return _cell(None if seconds is None else seconds * 1000, ".1f")


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
    table = [header]
    for s in rows:
        pct = s["acceptance_percentiles"]
        table.append(
            [
                f"{s['temperature']:g}",
                _cell(s["acceptance_rate"], ".3f"),
                _cell(pct.get("p10"), ".2f"),
                _cell(pct.get("p50"), ".2f"),
                _cell(pct.get("p90"), ".2f"),
                _cell(s["mean_acceptance_length"], ".2f"),
                _ms(s["ttft_seconds"]["p50"]),
                _ms(s["ttft_seconds"]["p99"]),
                _ms(s["tpot_seconds"]["p50"]),
                _ms(s["tpot_seconds"]["p99"]),
                str(s["failed"]),
                s["verdict"],
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        f"spec-exporter probe: {settings.target}, {settings.requests} requests per temperature"
        f" (concurrency {settings.concurrency}); TTFT/TPOT in ms",
        "",
    ]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
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
