"""Spec-decoding target against a baseline pool without it: measured speedup and tail ratio (pure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from spec_exporter.derive.health import TargetHealth, WindowHealth, costed, only_model, verdict_of
from spec_exporter.derive.load import LoadBandComparison, WindowLoad, compare_load_bands
from spec_exporter.types import DeriveParams, EngineGeneration, LatencyMetric


@dataclass(frozen=True, slots=True)
class Comparison:
    target: str
    baseline: str
    window: str
    # Per-request TPOT only: ITL observations cover 1 + accepted tokens under speculation, so they don't compare.
    tpot_speedup: float | None
    p99_ratio: Mapping[LatencyMetric, float]
    # TPOT p50 per load band both pools ran at in the window: where speculation pays and where it stops.
    load_bands: tuple[LoadBandComparison, ...] = ()


def compare(target: str, spec: TargetHealth, baseline_name: str, baseline: TargetHealth) -> list[Comparison]:
    """Per window: baseline TPOT p50 / spec TPOT p50, and spec p99 / baseline p99 per latency metric."""
    out = []
    for sw, bw in zip(spec.combined, baseline.combined, strict=True):
        speedup = None
        sp50 = sw.latency.get(LatencyMetric.TPOT, {}).get(0.5)
        bp50 = bw.latency.get(LatencyMetric.TPOT, {}).get(0.5)
        if sp50 is not None and bp50 is not None and sp50 > 0:
            speedup = bp50 / sp50
        ratios = {}
        for metric, q in sw.latency.items():
            sp99, bp99 = q.get(0.99), bw.latency.get(metric, {}).get(0.99)
            if sp99 is not None and bp99 is not None and bp99 > 0:
                ratios[metric] = sp99 / bp99
        bands: tuple[LoadBandComparison, ...] = ()
        sl, bl = _load(spec, sw.window.label), _load(baseline, sw.window.label)
        if sl is not None and bl is not None:
            tpot = LatencyMetric.TPOT
            bands = compare_load_bands(sl.latency_by_load_band.get(tpot, {}), bl.latency_by_load_band.get(tpot, {}))
        out.append(Comparison(target, baseline_name, sw.window.label, speedup, ratios, bands))
    return out


def _load(h: TargetHealth, window: str) -> WindowLoad | None:
    return next((w for w in h.load if w.window.label == window), None)


def compare_pairs(
    pairs: tuple[tuple[str, str], ...], health: Mapping[str, TargetHealth | None]
) -> tuple[Comparison, ...]:
    """Every (spec, baseline) pair whose two targets both have fresh health."""
    out: list[Comparison] = []
    for spec_name, baseline_name in pairs:
        spec, baseline = health.get(spec_name), health.get(baseline_name)
        if spec is not None and baseline is not None:
            out.extend(compare(spec_name, spec, baseline_name, baseline))
    return tuple(out)


def with_baseline(h: TargetHealth, comparisons: Sequence[Comparison], params: DeriveParams) -> TargetHealth:
    """`h` re-costed with the strongest evidence: the measured speedup against its baseline at the band it runs at.

    The comparison is of all engines together, so the measured speedup stands for each engine too: each gets
    rho = its own AL / that speedup (a V0 engine, judged by its lifetime gauge, is left as it is).
    """
    if h.generation is not EngineGeneration.V1:
        return h
    by_window = {c.window: c for c in comparisons}
    loads = {wl.window.label: wl.target for wl in h.load}
    speedups = {}
    for label, load in loads.items():
        c = by_window.get(label)
        at = next((b for b in c.load_bands if b.band == load.band), None) if c is not None else None
        if at is not None:
            speedups[label] = (load.mean_running, at.speedup)

    def recost(windows: Sequence[WindowHealth], k: int | None, model: str | None) -> tuple[WindowHealth, ...]:
        out = []
        for w in windows:
            found = speedups.get(w.window.label)
            out.append(w if found is None else costed(w, k, params, found[0], model, found[1]))
        return tuple(out)

    if not speedups:
        return h
    ks = {e.num_speculative_tokens for e in h.engines.values() if e.num_speculative_tokens}
    combined = recost(h.combined, ks.pop() if len(ks) == 1 else None, only_model(h.engines))
    engines = {}
    for key, e in h.engines.items():
        windows = combined if len(h.engines) == 1 else recost(e.windows, e.num_speculative_tokens, key[0])
        engines[key] = dataclasses.replace(e, windows=windows, verdict=verdict_of(windows, params))
    return dataclasses.replace(h, engines=engines, combined=combined, combined_verdict=verdict_of(combined, params))
