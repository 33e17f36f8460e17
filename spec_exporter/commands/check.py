"""`spec-exporter check`: poll a target twice across a window and answer "is speculative decoding helping?"."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from spec_exporter.commands.common import add_common_flags, build_settings, config_failed
from spec_exporter.commands.format import latency, number
from spec_exporter.config import ConfigError, Settings, format_duration, parse_duration
from spec_exporter.derive.baseline import Comparison
from spec_exporter.derive.cost import CostSource, StepCost, rule
from spec_exporter.derive.health import EngineHealth, TargetHealth, WindowHealth
from spec_exporter.derive.load import Load
from spec_exporter.derive.tap_health import TapHealth, TemperatureBandWindow
from spec_exporter.derive.verdict import ADVICE
from spec_exporter.poller import Poller
from spec_exporter.state import StateStore, TargetState
from spec_exporter.types import LatencyMetric, Thresholds, Verdict

EXIT_CODES = {Verdict.BENEFICIAL: 0, Verdict.BREAK_EVEN: 1, Verdict.DISABLE: 2, Verdict.INSUFFICIENT_DATA: 3}
EXIT_UNREACHABLE = 3


@dataclass(frozen=True, slots=True)
class CheckResult:
    target: str
    url: str
    window_seconds: float
    state: TargetState
    baseline_url: str | None = None
    comparisons: tuple[Comparison, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def load(self) -> Load | None:
        """Running requests per engine over the window, all engines; None before two polls."""
        h = self.health
        return h.load[0].target if h is not None and h.load else None

    @property
    def comparison(self) -> Comparison | None:
        return self.comparisons[0] if self.comparisons else None

    @property
    def health(self) -> TargetHealth | None:
        return self.state.health

    @property
    def verdict(self) -> Verdict:
        return self.health.combined_verdict if self.health is not None else Verdict.INSUFFICIENT_DATA

    @property
    def rule(self) -> str:
        """Which number decided the verdict, and why: the sentence beside every verdict `check` prints."""
        h = self.health
        cost = h.combined[0].cost if h is not None and h.combined else None
        return rule(cost, self.thresholds)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict] if self.health is not None else EXIT_UNREACHABLE


async def run_check(
    settings: Settings,
    session: aiohttp.ClientSession,
    *,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
) -> CheckResult:
    """Two polls `window` apart through the exporter's own poller; `settings` holds one target and one window.

    A second target with role baseline is polled alongside and compared with, load band by load band.
    """
    target = settings.targets[0]
    baseline = next((t for t in settings.targets if t.role == "baseline"), None)
    window = settings.windows[0]
    store = StateStore.for_settings(settings)
    poller = Poller(settings, session, store, clock=clock, sleep=sleep)
    await poller.poll_once()
    if store.current().targets[target.name].up:
        await sleep(window)
        await poller.poll_once()
    state = store.current()
    return CheckResult(
        target.name,
        target.metrics_url,
        window,
        state.targets[target.name],
        baseline.metrics_url if baseline is not None else None,
        tuple(c for c in state.comparisons if c.target == target.name),
        settings.thresholds,
    )


_LATENCY_ROWS = (
    (LatencyMetric.TTFT, "TTFT"),
    (LatencyMetric.TPOT, "TPOT"),
    (LatencyMetric.ITL, "ITL"),
    (LatencyMetric.E2E, "E2E"),
)


def _window_rows(w: WindowHealth, engine: EngineHealth | None) -> list[tuple[str, str]]:
    rows = []
    a = w.acceptance
    if engine is not None and engine.lifetime_acceptance is not None:
        rows.append(("draft acceptance rate", f"{number(engine.lifetime_acceptance)} (V0: since engine start)"))
    elif a is None:
        rows.append(("draft acceptance rate", "- (speculative decoding is not enabled)"))
    else:
        rows.append(
            (
                "draft acceptance rate",
                f"{number(a.rate)} ({a.accepted_tokens:g} of {a.draft_tokens:g} draft tokens accepted)",
            )
        )
        rows.append(("mean acceptance length", number(a.mean_length, 2)))
        rows.append(("acceptance by position", "  ".join(number(p, 2) for p in a.per_position) or "-"))
    for metric, title in _LATENCY_ROWS:
        q = w.latency.get(metric)
        if q:
            floor = w.latency_floor.get(metric)
            rows.append((f"{title} p50 / p99", f"{latency(q.get(0.5), floor)} / {latency(q.get(0.99), floor)}"))
    if w.divergence:
        rows.append(
            (
                "P99/P50 divergence",
                "  ".join(f"{title} {w.divergence[m]:.2f}" for m, title in _LATENCY_ROWS if m in w.divergence),
            )
        )
    if a is not None and w.effective_k is not None:
        share = f"; {w.speculated_share:.0%} of decode steps drafted" if w.speculated_share is not None else ""
        rows.append(("effective k", f"{w.effective_k:.2f} draft tokens per draft{share}"))
    if w.cost is not None:
        rows.append(("step cost rho", f"{w.cost.rho:.3f} ({_source_text(w.cost)})"))
        if w.cost.note:
            rows.append(("", w.cost.note))
        if w.break_even_rate is not None and a is not None:
            rows.append(
                (
                    "break-even acceptance",
                    f"{w.break_even_rate:.3f} (vLLM's rate, (rho - 1) / k_eff; this pool's: {number(a.rate)})",
                )
            )
    if w.expected_speedup is not None and w.cost is not None and a is not None:
        rows.append(
            (
                "modelled speedup",
                f"{w.expected_speedup:.2f}x (acceptance length {number(a.mean_length, 2)} / rho {w.cost.rho:.3f})",
            )
        )
    best = w.recommended
    if best is not None:
        if best.k == 0:
            text = "0: no k models a speedup above 1 (speculation does not pay at this acceptance)"
        elif best.at_configured_k:
            text = f"{best.k} ({best.speedup:.2f}x): the configured k is the best measured; a larger k may do better"
        else:
            text = f"{best.k} ({best.speedup:.2f}x): fewer speculative tokens would do better than k={len(best.curve)}"
        rows.append(("best k (modelled)", text))
    return rows


def band_text(band: str) -> str:
    """A temperature band label as the range it stands for: `0` greedy, `0.7-1.0` half-open, `1.0+`."""
    if band == "0":
        return "T = 0"
    if band.endswith("+"):
        return f"T ≥ {band[:-1]}"
    lo, sep, hi = band.partition("-")
    if sep and lo == "0":
        return f"T < {hi}"
    return f"T {lo}-{hi}" if sep else f"T {band}"


def workload_advice(w: TemperatureBandWindow) -> str:
    """What to do for one class and band: its best k, or turn speculation off for it."""
    best = w.recommended
    if best is not None:
        return "turn off" if best.k == 0 else f"best k {best.k} ({best.speedup:.2f}x modelled)"
    if w.expected_speedup is not None:
        return "turn off" if w.expected_speedup < 1 else f"{w.expected_speedup:.2f}x modelled (no per-position counts)"
    return f"acceptance {number(w.accepted / w.drafted)}" if w.drafted else "no measured requests"


def workload_rows(tap: TapHealth | None) -> list[tuple[str, str]]:
    """One row per (workload, temperature band) the tap measured in the check's window, e.g.
    `code (T = 0)  best k 4 (1.41x modelled)` and `chat (T 0.7-1.0)  turn off`."""
    if tap is None:
        return []
    rows = []
    for b in tap.bands:
        w = b.windows[0] if b.windows else None
        if w is None or not w.drafted:
            continue
        _, workload, band = b.key
        rows.append((f"{workload} ({band_text(band)})", workload_advice(w)))
    return rows


def _source_text(cost: StepCost) -> str:
    load = f" at {cost.load:.1f} running requests per engine" if cost.load is not None else ""
    if cost.source is CostSource.BASELINE:
        return f"baseline: measured against the baseline pool{load}"
    if cost.source is CostSource.CALIBRATION:
        return f"calibration: the configured profile read{load}"
    return f"prior: 1 + k_eff*c with k_eff {cost.k:.2f}; ignores load"


def _load_rows(result: CheckResult) -> list[tuple[str, str]]:
    load = result.load
    if load is None:
        return []
    if load.band is None:
        rows = [("load", "idle (nothing ran in the window)")]
    else:
        rows = [("load", f"{load.mean_running:.1f} running requests per engine: band {load.band}")]
    c = result.comparison
    if c is None:
        return rows
    if c.tpot_speedup is not None:
        rows.append(("TPOT speedup vs baseline", f"{c.tpot_speedup:.2f}x (baseline TPOT p50 / this pool's)"))
    at = next((b for b in c.load_bands if b.band == load.band), None)
    if at is not None:
        rows.append(
            (
                f"speedup at band {at.band}",
                f"{at.speedup:.2f}x (TPOT p50 {latency(at.spec_p50)} vs baseline "
                f"{latency(at.baseline_p50)}, {at.requests:g} requests)",
            )
        )
    elif load.band is not None:
        rows.append((f"speedup at band {load.band}", "- (the baseline finished no requests at this band)"))
    return rows


def render_table(result: CheckResult) -> str:
    head = f"spec-exporter check: {result.url} over {format_duration(result.window_seconds)}"
    h = result.health
    if h is None:
        err = result.state.last_error.value if result.state.last_error else "unknown"
        return f"{head}\n\nunreachable or unreadable ({err}): no verdict.\n"
    engines = list(h.engines.values())
    k = {e.num_speculative_tokens for e in engines if e.num_speculative_tokens}
    lines = [
        head,
        f"vLLM engine {h.generation.value}, {len(engines)} engine(s)" + (f", k={k.pop()}" if len(k) == 1 else ""),
        "",
    ]
    only = engines[0] if len(engines) == 1 else None
    rows = _window_rows(h.combined[0], only)
    if len(engines) > 1:
        for e in engines:
            rate = e.windows[0].acceptance.rate if e.windows[0].acceptance else e.lifetime_acceptance
            rows.append((f"engine {e.key[0]}/{e.key[1]}", f"acceptance {number(rate)}, verdict {e.verdict.value}"))
    rows += _load_rows(result)
    by_class = workload_rows(h.tap)
    if by_class:
        rows.append(("by workload and band", "; ".join(f"{t}: {v}" for t, v in by_class)))
    rows.append(("verdict", result.verdict.value.upper()))
    width = max(len(r[0]) for r in rows) + 2
    lines += [f"{title:<{width}}{value}" for title, value in rows]
    lines += ["", "rule: " + result.rule, "advice: " + ADVICE[result.verdict]]
    lines.append("")
    return "\n".join(lines)


def _window_json(w: WindowHealth) -> dict[str, Any]:
    a = w.acceptance
    return {
        "span_seconds": w.span_seconds,
        "acceptance": None
        if a is None
        else {
            "rate": a.rate,
            "mean_length": a.mean_length,
            "per_position": list(a.per_position),
            "accepted_tokens": a.accepted_tokens,
            "draft_tokens": a.draft_tokens,
            "drafts": a.drafts,
        },
        "latency_seconds": {m.value: {str(q): v for q, v in qs.items()} for m, qs in w.latency.items()},
        "divergence": {m.value: v for m, v in w.divergence.items()},
        "step_cost": None
        if w.cost is None
        else {
            "rho": w.cost.rho,
            "source": w.cost.source.value,
            "k_eff": w.cost.k,
            "load": w.cost.load,
            "note": w.cost.note or None,
        },
        "break_even_acceptance_rate": w.break_even_rate,
        "expected_speedup": w.expected_speedup,
        "latency_lowest_bucket_seconds": {m.value: v for m, v in w.latency_floor.items()},
        "effective_k": w.effective_k,
        "speculated_share": w.speculated_share,
        "recommended_num_speculative_tokens": None
        if w.recommended is None
        else {"k": w.recommended.k, "speedup": w.recommended.speedup, "at_configured_k": w.recommended.at_configured_k},
        "verdict": w.verdict.value,
    }


def _load_json(result: CheckResult) -> dict[str, Any]:
    load = result.load
    c = result.comparison
    doc: dict[str, Any] = {
        "mean_running_requests": load.mean_running if load is not None else None,
        "load_band": load.band if load is not None else None,
        "baseline": None,
    }
    if c is not None:
        at = next((b for b in c.load_bands if load is not None and b.band == load.band), None)
        doc["baseline"] = {
            "url": result.baseline_url,
            "tpot_speedup": c.tpot_speedup,
            "tpot_speedup_at_load_band": at.speedup if at is not None else None,
            "requests_at_load_band": at.requests if at is not None else None,
            "load_bands": {b.band: {"tpot_speedup": b.speedup, "requests": b.requests} for b in c.load_bands},
        }
    return doc


def render_json(result: CheckResult) -> str:
    h = result.health
    doc: dict[str, Any] = {
        "target": result.target,
        "url": result.url,
        "window_seconds": result.window_seconds,
        "verdict": result.verdict.value,
        "rule": result.rule,
        "advice": ADVICE[result.verdict],
        "exit_code": result.exit_code,
        "error": result.state.last_error.value if result.state.last_error else None,
        "load": _load_json(result),
    }
    if h is not None:
        doc["engine_generation"] = h.generation.value
        doc["all_engines"] = _window_json(h.combined[0])
        doc["engines"] = [
            {
                "model_name": e.key[0],
                "engine": e.key[1],
                "spec_decode_enabled": e.spec_enabled,
                "num_speculative_tokens": e.num_speculative_tokens,
                "lifetime_acceptance": e.lifetime_acceptance,
                **_window_json(e.windows[0]),
                # The engine's verdict, which for V0 comes from its lifetime gauge rather than the window.
                "verdict": e.verdict.value,
            }
            for e in h.engines.values()
        ]
        doc["workloads"] = [
            {
                "model_name": b.key[0],
                "workload": b.key[1],
                "temperature_band": b.key[2],
                "drafted": b.windows[0].drafted,
                "accepted": b.windows[0].accepted,
                "acceptance_length": b.windows[0].acceptance_length,
                "expected_speedup": b.windows[0].expected_speedup,
                "best_k": None if b.windows[0].recommended is None else b.windows[0].recommended.k,
                "advice": workload_advice(b.windows[0]),
            }
            for b in (h.tap.bands if h.tap is not None else ())
            if b.windows and b.windows[0].drafted
        ]
    return json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n"


def check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spec-exporter check",
        description="Poll one vLLM twice, WINDOW apart, and say whether speculative decoding is paying off. "
        "Exit code: 0 beneficial, 1 break-even, 2 disable, 3 insufficient data or unreachable.",
    )
    p.add_argument("--target", required=True, metavar="URL", help="vLLM base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--baseline-target",
        metavar="URL",
        help="the same model served without speculative decoding: polled alongside for the measured speedup at the "
        "load band the target runs at",
    )
    p.add_argument(
        "--window", default="60s", metavar="DURATION", help="time between the two polls (default %(default)s)"
    )
    p.add_argument("--timeout", default="5s", metavar="DURATION", help="per-poll timeout (default %(default)s)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="report format")
    add_common_flags(p)
    return p


def check_settings(args: argparse.Namespace) -> Settings:
    try:
        window = parse_duration(args.window)
        timeout = parse_duration(args.timeout)
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    # The check is the poller with a single window, polled twice one window apart by run_check. The interval is
    # half the window only because a window must span two intervals; its slack keeps the first poll as the base.
    return build_settings(
        args.config_file,
        targets=[args.target],
        baselines=[args.baseline_target] if args.baseline_target else [],
        only_these_targets=True,
        overrides={
            "windows": [window],
            "verdict_window": None,
            "poll": {"interval": window / 2, "timeout": min(timeout, window / 2)},
        },
    )


def check(
    argv: Sequence[str],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    from spec_exporter.logs import setup_logging

    args = check_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        settings = check_settings(args)
    except ConfigError as e:
        return config_failed(e)

    async def go() -> CheckResult:
        async with aiohttp.ClientSession() as session:
            return await run_check(settings, session, sleep=sleep, clock=clock)

    result = asyncio.run(go())
    sys.stdout.write(render_json(result) if args.output == "json" else render_table(result))
    return result.exit_code
