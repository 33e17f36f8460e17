"""Spec-decoding target against a baseline pool without it: measured speedup and tail ratio (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spec_exporter.derive.health import TargetHealth
from spec_exporter.derive.load import LoadBandComparison, WindowLoad, compare_load_bands
from spec_exporter.types import LatencyMetric


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
