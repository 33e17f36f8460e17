"""Everything derived for one target from its latest point and its window deltas (pure)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from spec_exporter.derive import cost as cost_model
from spec_exporter.derive.acceptance import Acceptance, acceptance, sum_spec
from spec_exporter.derive.cost import BestK, StepCost
from spec_exporter.derive.latency import divergence, merge_each, quantiles
from spec_exporter.derive.load import Load, WindowLoad, effective_k, speculated_share
from spec_exporter.derive.load import window_loads as derive_window_loads
from spec_exporter.derive.tap_health import TapHealth, derive_tap
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
    # AL / rho(B): the measured acceptance length over the step cost at the window's load (derive/cost.py).
    expected_speedup: float | None
    verdict: Verdict
    # Draft tokens per draft, and drafts per ITL observation (share of decode steps that speculated).
    effective_k: float | None = None
    speculated_share: float | None = None
    # The k in 1..configured k the per-position acceptance models best (0: none pays).
    recommended: BestK | None = None
    # rho at the window's load and where it came from; the vLLM rate at which AL / rho = 1.
    cost: StepCost | None = None
    break_even_rate: float | None = None
    # Per latency metric, the upper bound of vLLM's lowest bucket: a quantile at or below it says only "< bound".
    latency_floor: Mapping[LatencyMetric, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EngineHealth:
    key: EngineKey
    generation: EngineGeneration
    spec_enabled: bool
    num_speculative_tokens: int | None
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
    load: float | None = None,
    model: str | None = None,
) -> WindowHealth:
    acc = acceptance(spec) if spec is not None else None
    latency = {m: q for m, h in histograms.items() if (q := quantiles(h))}
    div = {}
    for m, q in latency.items():
        d = divergence(q.get(0.5), q.get(0.99))
        if d is not None:
            div[m] = d
    itl = histograms.get(LatencyMetric.ITL)

    def per_second(value: float | None) -> float | None:
        return value / span if value is not None and span > 0 else None

    measured = WindowHealth(
        window=window,
        span_seconds=span,
        acceptance=acc,
        latency=latency,
        divergence=div,
        generation_tokens_per_second=per_second(generation_tokens),
        preemptions_per_second=per_second(preemptions),
        expected_speedup=None,
        verdict=Verdict.INSUFFICIENT_DATA,
        effective_k=effective_k(spec) if spec is not None else None,
        speculated_share=speculated_share(spec.drafts, itl.count) if spec is not None and itl is not None else None,
        latency_floor={m: h.bounds[0] for m, h in histograms.items() if m in latency and h.bounds},
    )
    return costed(measured, k, params, load, model)


def costed(
    w: WindowHealth,
    k: int | None,
    params: DeriveParams,
    load: float | None,
    model: str | None,
    baseline_speedup: float | None = None,
) -> WindowHealth:
    """`w` with every modelled number and the verdict, from one step cost (derive/cost.py) at `load`.

    `baseline_speedup`: the measured speedup against a baseline pool at the load band the target runs at.
    """
    a = w.acceptance
    k_eff = w.effective_k if w.effective_k is not None else (float(k) if k else None)
    cost = None
    if a is not None and k_eff:
        cost = cost_model.step_cost(
            k_eff=k_eff,
            draft_cost_ratio=params.draft_cost_ratio,
            load=load,
            model=model,
            k=k,
            profile=params.cost_profile,
            baseline_speedup=baseline_speedup,
            acceptance_length=a.mean_length,
        )
    speedup = cost_model.speedup(a.mean_length, cost) if cost is not None and a and a.mean_length else None
    rate = a.rate if a is not None else None
    return dataclasses.replace(
        w,
        cost=cost,
        expected_speedup=speedup,
        break_even_rate=cost_model.break_even_rate(cost) if cost is not None else None,
        verdict=cost_model.verdict(rate, a.draft_tokens if a else None, speedup, cost, params.thresholds),
        recommended=(
            cost_model.best_k(a.accepted_per_position, a.drafts, a.draft_tokens, cost)
            if a is not None and cost is not None
            else None
        ),
    )


def _empty_window(window: Window) -> WindowHealth:
    return WindowHealth(window, 0.0, None, {}, {}, None, None, None, Verdict.INSUFFICIENT_DATA)


def _engine_health(
    key: EngineKey,
    sample: EngineSample,
    latest: Point,
    deltas: Mapping[str, WindowDelta | None],
    params: DeriveParams,
    loads: Mapping[str, float | None],
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
                loads.get(window.label),
                key[0],
            )
        )
    lifetime = sample.lifetime_acceptance
    if v0:
        # V0's counters are sums of running totals; its lifetime gauge is the only honest acceptance.
        engine_verdict = cost_model.verdict(
            None if lifetime is None or math.isnan(lifetime) else lifetime, None, None, None, params.thresholds
        )
    else:
        engine_verdict = verdict_of(windows, params)
    return EngineHealth(
        key=key,
        generation=generation,
        spec_enabled=spec_enabled,
        num_speculative_tokens=k if spec_enabled else None,
        lifetime_acceptance=lifetime if v0 else None,
        verdict=engine_verdict,
        windows=tuple(windows),
        totals=latest.totals[key],
        requests_running=sample.requests_running,
        requests_waiting=sample.requests_waiting,
        kv_cache_usage=sample.kv_cache_usage,
    )


def verdict_of(windows: Iterable[WindowHealth], params: DeriveParams) -> Verdict:
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
    load = (
        derive_window_loads(
            points, params.windows, slack_seconds, tuple(snapshot.engines), load_band_latency=load_band_latency
        )
        if points
        else ()
    )
    engines = {
        key: _engine_health(
            key, sample, latest, deltas, params, {wl.window.label: _running(wl.engines.get(key)) for wl in load}
        )
        for key, sample in snapshot.engines.items()
    }
    if len(engines) == 1:
        # One engine is the whole target: its windows already are the combined ones.
        (only,) = engines.values()
        combined = only.windows
    else:
        target_load = {wl.window.label: wl.target.mean_running for wl in load}
        combined = tuple(
            _combined_window(w, deltas.get(w.label), engines, params, target_load.get(w.label)) for w in params.windows
        )
    if snapshot.generation is EngineGeneration.V0:
        combined_verdict = _v0_combined_verdict(engines.values())
    else:
        combined_verdict = verdict_of(combined, params)
    tap = None
    if snapshot.tap is not None and latest.tap is not None:
        engine_drafted = {w.window.label: w.acceptance.draft_tokens if w.acceptance else None for w in combined}
        tap_deltas = {label: d.tap if d is not None else None for label, d in deltas.items()}
        costs = {w.window.label: w.cost for w in combined}
        tap = derive_tap(latest.tap, tap_deltas, engine_drafted, params, costs, speculative=snapshot.tap.speculative)
    return TargetHealth(snapshot.generation, engines, combined, combined_verdict, tap, load)


def _v0_combined_verdict(engines: Iterable[EngineHealth]) -> Verdict:
    verdicts = [e.verdict for e in engines if e.spec_enabled]
    return verdicts[0] if len(verdicts) == 1 else Verdict.INSUFFICIENT_DATA


def _running(load: Load | None) -> float | None:
    return load.mean_running if load is not None else None


def only_model(engines: Iterable[EngineKey]) -> str | None:
    models = {key[0] for key in engines}
    return models.pop() if len(models) == 1 else None


def _combined_window(
    window: Window,
    delta: WindowDelta | None,
    engines: Mapping[EngineKey, EngineHealth],
    params: DeriveParams,
    load: float | None,
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
        load,
        only_model(engines),
    )
