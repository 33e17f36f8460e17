"""Spec-decoding target against a baseline pool without it: measured speedup and tail ratio (pure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from spec_exporter.derive.health import TargetHealth, costed, only_model, verdict_of
from spec_exporter.derive.load import BandComparison, compare_bands
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
    load_bands: tuple[BandComparison, ...] = ()


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
        bands: tuple[BandComparison, ...] = ()
        sl, bl = _load(spec, sw.window.label), _load(baseline, sw.window.label)
        if sl is not None and bl is not None:
            tpot = LatencyMetric.TPOT
            bands = compare_bands(sl.latency_by_band.get(tpot, {}), bl.latency_by_band.get(tpot, {}))
        out.append(Comparison(target, baseline_name, sw.window.label, speedup, ratios, bands))
    return out


def _load(h: TargetHealth, window: str):  # type: ignore[no-untyped-def]
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

    Applies to the target as a whole (the comparison is of all engines), and to its engine when it has one.
    """
    by_window = {c.window: c for c in comparisons}
    loads = {wl.window.label: wl.target for wl in h.load}
    model = only_model(h.engines)
    ks = {e.num_speculative_tokens for e in h.engines.values() if e.num_speculative_tokens}
    k = ks.pop() if len(ks) == 1 else None
    combined = []
    for w in h.combined:
        c, load = by_window.get(w.window.label), loads.get(w.window.label)
        at = next((b for b in c.load_bands if b.band == load.band), None) if c and load else None
        if at is None:
            combined.append(w)
            continue
        combined.append(costed(w, k, params, load.mean_running if load else None, model, at.speedup))
    engines = h.engines
    if len(engines) == 1:
        ((key, only),) = engines.items()
        if only.generation is EngineGeneration.V1:
            engines = {key: dataclasses.replace(only, windows=tuple(combined), verdict=verdict_of(combined, params))}
    combined_verdict = h.combined_verdict
    if h.generation is EngineGeneration.V1:
        combined_verdict = verdict_of(combined, params)
    return dataclasses.replace(h, engines=engines, combined=tuple(combined), combined_verdict=combined_verdict)
