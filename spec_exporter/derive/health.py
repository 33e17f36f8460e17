"""Everything derived for one target from its latest point and its window deltas (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from spec_exporter.derive.acceptance import Acceptance, acceptance, sum_spec
from spec_exporter.derive.latency import divergence, merge_each, quantiles
from spec_exporter.derive.load import BestK, WindowLoad, best_k, effective_k, speculated_share, speedup_from_length
from spec_exporter.derive.load import window_loads as derive_window_loads
from spec_exporter.derive.tap_health import TapHealth, derive_tap
from spec_exporter.derive.verdict import break_even_acceptance, verdict
from spec_exporter.types import (
    DeriveParams,
    EngineGeneration,
    EngineKey,
    EngineSample,
    Histogram,
    LatencyMetric,
    SpecCounters,
    Verdict,
    Window,
)
from spec_exporter.window import EngineTotals, Point, WindowDelta


@dataclass(frozen=True, slots=True)
class WindowHealth:
    window: Window
    span_seconds: float
    acceptance: Acceptance | None
    latency: Mapping[LatencyMetric, Mapping[float, float]]
    divergence: Mapping[LatencyMetric, float]
    generation_tokens_per_second: float | None
    preemptions_per_second: float | None
    # AL / (1 + k·c) from the measured acceptance length at the configured k.
    expected_speedup: float | None
    verdict: Verdict
    # Draft tokens per draft, and drafts per ITL observation (share of decode steps that speculated).
    effective_k: float | None = None
    speculated_share: float | None = None
    # The k in 1..configured k the per-position acceptance models best (0: none pays).
    recommended: BestK | None = None


@dataclass(frozen=True, slots=True)
class EngineHealth:
    key: EngineKey
    generation: EngineGeneration
    spec_enabled: bool
    num_speculative_tokens: int | None
    break_even_acceptance: float | None
    lifetime_acceptance: float | None
    verdict: Verdict
    windows: tuple[WindowHealth, ...]
    totals: EngineTotals
    requests_running: float | None
    requests_waiting: float | None
    kv_cache_usage: float | None


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """Per engine, plus the target as a whole (engines summed) for baselines and the `check` report."""

    generation: EngineGeneration
    engines: Mapping[EngineKey, EngineHealth]
    combined: tuple[WindowHealth, ...] = field(default=())
    combined_verdict: Verdict = Verdict.INSUFFICIENT_DATA
    # Acceptance by temperature band, when the scrape carries the tap's series (middleware or proxy).
    tap: TapHealth | None = None
    # Running requests per engine and latency by load band, per window (shortest first).
    load: tuple[WindowLoad, ...] = ()


def _window_health(
    window: Window,
    span: float,
    spec: SpecCounters | None,
    histograms: Mapping[LatencyMetric, Histogram],
    generation_tokens: float | None,
    preemptions: float | None,
    k: int | None,
    params: DeriveParams,
) -> WindowHealth:
    acc = acceptance(spec) if spec is not None else None
    latency = {m: q for m, h in histograms.items() if (q := quantiles(h))}
    div = {}
    for m, q in latency.items():
        d = divergence(q.get(0.5), q.get(0.99))
        if d is not None:
            div[m] = d
    rate = acc.rate if acc is not None else None
    length = acc.mean_length if acc is not None else None
    speedup = speedup_from_length(length, k, params.draft_cost_ratio) if length is not None and k else None
    itl = histograms.get(LatencyMetric.ITL)

    def per_second(value: float | None) -> float | None:
        return value / span if value is not None and span > 0 else None

    return WindowHealth(
        window=window,
        span_seconds=span,
        acceptance=acc,
        latency=latency,
        divergence=div,
        generation_tokens_per_second=per_second(generation_tokens),
        preemptions_per_second=per_second(preemptions),
        expected_speedup=speedup,
        verdict=verdict(rate, acc.draft_tokens if acc is not None else None, params.thresholds),
        effective_k=effective_k(spec) if spec is not None else None,
        speculated_share=speculated_share(spec.drafts, itl.count) if spec is not None and itl is not None else None,
        recommended=best_k(spec.per_position, spec.drafts, params.draft_cost_ratio) if spec is not None else None,
    )


def _empty_window(window: Window) -> WindowHealth:
    return WindowHealth(window, 0.0, None, {}, {}, None, None, None, Verdict.INSUFFICIENT_DATA)


def _engine_health(
    key: EngineKey, sample: EngineSample, latest: Point, deltas: Mapping[str, WindowDelta | None], params: DeriveParams
) -> EngineHealth:
    generation = latest.snapshot.generation
    v0 = generation is EngineGeneration.V0
    spec_enabled = sample.spec is not None or (v0 and sample.lifetime_acceptance is not None)
    k = params.num_speculative_tokens
    if k is None and sample.spec is not None and sample.spec.per_position:
        k = len(sample.spec.per_position)
    windows = []
    for window in params.windows:
        delta = deltas.get(window.label)
        d = delta.engines.get(key) if delta is not None else None
        if delta is None or d is None:
            windows.append(_empty_window(window))
            continue
        windows.append(
            _window_health(
                window,
                delta.span_seconds,
                # What this scrape lacks is missing, even though its totals carry on.
                d.spec if sample.spec is not None else None,
                {m: h for m, h in d.histograms.items() if m in sample.histograms},
                d.generation_tokens if sample.generation_tokens is not None else None,
                d.preemptions if sample.preemptions is not None else None,
                k,
                params,
            )
        )
    lifetime = sample.lifetime_acceptance
    if v0:
        # V0's counters are sums of running totals; its lifetime gauge is the only honest acceptance.
        engine_verdict = verdict(
            None if lifetime is None or math.isnan(lifetime) else lifetime, None, params.thresholds
        )
    else:
        engine_verdict = _verdict_of(windows, params)
    return EngineHealth(
        key=key,
        generation=generation,
        spec_enabled=spec_enabled,
        num_speculative_tokens=k if spec_enabled else None,
        break_even_acceptance=break_even_acceptance(k, params.draft_cost_ratio) if spec_enabled and k else None,
        lifetime_acceptance=lifetime if v0 else None,
        verdict=engine_verdict,
        windows=tuple(windows),
        totals=latest.totals[key],
        requests_running=sample.requests_running,
        requests_waiting=sample.requests_waiting,
        kv_cache_usage=sample.kv_cache_usage,
    )


def _verdict_of(windows: Iterable[WindowHealth], params: DeriveParams) -> Verdict:
    return next((w.verdict for w in windows if w.window.label == params.verdict_window), Verdict.INSUFFICIENT_DATA)


def derive_target(
    latest: Point,
    deltas: Mapping[str, WindowDelta | None],
    params: DeriveParams,
    points: Sequence[Point] = (),
    slack_seconds: float = 0.0,
    *,
    load_band_latency: bool = True,
) -> TargetHealth:
    """Health of every engine of a target; `deltas` maps each window label to its delta (None: too early).

    `points` (the ring, oldest first, ending at `latest`) gives the load of each window; without them, none.
    `load_band_latency`: also TPOT and ITL by load band (for a target compared with a baseline, and its baseline).
    """
    snapshot = latest.snapshot
    engines = {key: _engine_health(key, sample, latest, deltas, params) for key, sample in snapshot.engines.items()}
    if len(engines) == 1:
        # One engine is the whole target: its windows already are the combined ones.
        (only,) = engines.values()
        combined = only.windows
    else:
        combined = tuple(_combined_window(w, deltas.get(w.label), engines, params) for w in params.windows)
    if snapshot.generation is EngineGeneration.V0:
        combined_verdict = _v0_combined_verdict(engines.values())
    else:
        combined_verdict = _verdict_of(combined, params)
    tap = None
    if snapshot.tap is not None and latest.tap is not None:
        engine_drafted = {w.window.label: w.acceptance.draft_tokens if w.acceptance else None for w in combined}
        tap_deltas = {label: d.tap if d is not None else None for label, d in deltas.items()}
        tap = derive_tap(latest.tap, tap_deltas, engine_drafted, params)
    load = (
        derive_window_loads(points, params.windows, slack_seconds, tuple(engines), load_band_latency=load_band_latency)
        if points
        else ()
    )
    return TargetHealth(snapshot.generation, engines, combined, combined_verdict, tap, load)


def _v0_combined_verdict(engines: Iterable[EngineHealth]) -> Verdict:
    verdicts = [e.verdict for e in engines if e.spec_enabled]
    return verdicts[0] if len(verdicts) == 1 else Verdict.INSUFFICIENT_DATA


def _combined_window(
    window: Window, delta: WindowDelta | None, engines: Mapping[EngineKey, EngineHealth], params: DeriveParams
) -> WindowHealth:
    if delta is None:
        return _empty_window(window)
    parts = [delta.engines[key] for key in engines if key in delta.engines]
    specs = [p.spec for p in parts if p.spec is not None]
    ks = {e.num_speculative_tokens for e in engines.values() if e.num_speculative_tokens}
    return _window_health(
        window,
        delta.span_seconds,
        sum_spec(specs),
        merge_each(p.histograms for p in parts),
        math.fsum(p.generation_tokens for p in parts),
        math.fsum(p.preemptions for p in parts),
        ks.pop() if len(ks) == 1 else None,
        params,
    )
