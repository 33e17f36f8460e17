"""Slow, plain reference versions of what `spec_exporter.derive.load.window_loads` computes in one pass over the
ring: every poll interval on its own (`intervals`), and latency per load band by merging interval by interval
(`histograms_by_load_band`). tests/test_load.py checks the fast path against them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

from spec_exporter.derive.latency import merge
from spec_exporter.derive.load import Interval, _engine_step, _Step, load_band
from spec_exporter.types import EngineKey, Histogram, LatencyMetric
from spec_exporter.window import Point


def _combine(seconds: float, parts: Sequence[_Step]) -> Interval:
    """Engines taken together: the mean load per engine, their histogram increases summed."""
    mean = sum(r for r, _ in parts) / len(parts)
    if len(parts) == 1:
        return Interval(seconds, mean if mean > 0 else None, parts[0][1])
    histograms: dict[LatencyMetric, Histogram] = {}
    for metric in {m for _, hs in parts for m in hs}:
        merged = merge(hs[metric] for _, hs in parts if metric in hs)
        if merged is not None:
            histograms[metric] = merged
    return Interval(seconds, mean if mean > 0 else None, histograms)


def intervals(
    points: Sequence[Point],
    keys: Iterable[EngineKey],
    latencies: Sequence[LatencyMetric] = (LatencyMetric.TPOT, LatencyMetric.ITL),
) -> list[Interval]:
    """Every poll interval between consecutive points, for the engines in `keys` taken together.

    Load is per engine: the mean over the engines present of each one's load (idle engines count as 0 when
    another engine is busy). The increases of `latencies` are summed over the engines.
    """
    keys = tuple(keys)
    out = []
    for a, b in pairwise(points):
        parts = [p for key in keys if (p := _engine_step(a, b, key, latencies)) is not None]
        if parts:
            out.append(_combine(b.taken_at - a.taken_at, parts))
    return out


def histograms_by_load_band(spans: Sequence[Interval], metric: LatencyMetric) -> dict[str, Histogram]:
    """A latency histogram's increase per load band: each interval's observations go to the band it ran at.

    Requests finishing in an interval are credited to its load; their earlier steps may have run at another, so
    this is sharp for steady load and blurred across a band edge.
    """
    by_band: dict[str, list[Histogram]] = {}
    for i in spans:
        h = i.histograms.get(metric)
        if i.running is None or h is None or h.count <= 0:
            continue
        by_band.setdefault(load_band(i.running), []).append(h)
    out = {}
    for band, hs in by_band.items():
        merged = merge(hs)
        if merged is not None:
            out[band] = merged
    return out
