"""The load derivations done the slow, obvious way, interval by interval: what `window_loads` must agree with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from spec_exporter.derive.latency import merge_each
from spec_exporter.derive.load import Interval, engine_load, load_band
from spec_exporter.types import EngineKey, Histogram, LatencyMetric
from spec_exporter.window import Point, histogram_increase


@dataclass(frozen=True, slots=True)
class Span(Interval):
    """A poll interval with what it added to the latency histograms of its engines."""

    histograms: Mapping[LatencyMetric, Histogram]


def intervals(
    points: Sequence[Point],
    keys: Iterable[EngineKey],
    latencies: Sequence[LatencyMetric] = (LatencyMetric.TPOT, LatencyMetric.ITL),
) -> list[Span]:
    """Every poll interval between consecutive points, for the engines in `keys` taken together.

    Load is per engine: the mean over the engines present of each one's load (idle engines count as 0 when
    another engine is busy). The increases of `latencies` are summed over the engines.
    """
    keys = tuple(keys)
    out = []
    for a, b in pairwise(points):
        present = [k for k in keys if engine_load(a, b, k) is not None]
        if not present:
            continue
        loads = [engine_load(a, b, k) or 0.0 for k in present]
        mean = sum(loads) / len(loads)
        increases = []
        for k in present:
            ta, tb = a.totals[k], b.totals[k]
            increases.append(
                {
                    m: h
                    for m in latencies
                    if (h := histogram_increase(tb.histograms.get(m), ta.histograms.get(m))) is not None
                }
            )
        out.append(Span(b.taken_at - a.taken_at, mean if mean > 0 else None, merge_each(increases)))
    return out


def histograms_by_load_band(spans: Sequence[Span], metric: LatencyMetric) -> dict[str, Histogram]:
    """A latency histogram's increase per load band: each interval's observations go to the band it ran at."""
    return merge_each(
        {load_band(i.running): h}
        for i in spans
        if i.running is not None and (h := i.histograms.get(metric)) is not None and h.count > 0
    )
