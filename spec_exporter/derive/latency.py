"""Latency quantiles from histogram deltas, computed exactly as PromQL's `histogram_quantile` does."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

from spec_exporter.types import Histogram

QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)

K = TypeVar("K", bound=Hashable)


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    """PromQL `bucketQuantile` (Prometheus 2.x, classic histograms) on cumulative `counts` per upper bound.

    Same rules, same order of floating-point operations: NaN without a +Inf bucket or without observations,
    linear interpolation inside the bucket (from 0 for the first one when its bound is positive), the
    second-highest bound when the rank falls in the +Inf bucket, buckets with equal bounds merged, and counts
    forced monotonic.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    return _quantile(q, _prepare(bounds, counts))


def _prepare(bounds: Sequence[float], counts: Sequence[float]) -> list[list[float]] | None:
    """Sorted, merged, monotonic [bound, count] buckets; None when PromQL would answer NaN for any q."""
    pairs = sorted(zip(bounds, counts, strict=True), key=lambda bc: bc[0])
    if not pairs or not math.isinf(pairs[-1][0]) or pairs[-1][0] < 0:
        return None
    merged: list[list[float]] = []
    for bound, count in pairs:
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    highest = -math.inf
    for b in merged:
        if b[1] > highest:
            highest = b[1]
        elif b[1] < highest:
            b[1] = highest
    if len(merged) < 2:
        return None
    observations = merged[-1][1]
    if observations == 0 or math.isnan(observations):
        return None
    return merged


def _quantile(q: float, merged: list[list[float]] | None) -> float:
    if merged is None:
        return math.nan
    rank = q * merged[-1][1]
    # sort.Search over all but the +Inf bucket: first index whose count reaches the rank.
    index = len(merged) - 1
    for i in range(len(merged) - 1):
        if merged[i][1] >= rank:
            index = i
            break
    if index == len(merged) - 1:
        return merged[-2][0]
    if index == 0 and merged[0][0] <= 0:
        return merged[0][0]
    bucket_start = 0.0
    bucket_end = merged[index][0]
    count = merged[index][1]
    if index > 0:
        bucket_start = merged[index - 1][0]
        count -= merged[index - 1][1]
        rank -= merged[index - 1][1]
    if count == 0:
        # q = 0 on an empty first bucket: Go's 0/0 is NaN, Python's raises.
        return math.nan
    return bucket_start + (bucket_end - bucket_start) * (rank / count)


def quantiles(histogram: Histogram, qs: Iterable[float] = QUANTILES) -> dict[float, float]:
    """Quantiles of a histogram delta; NaN ones (no observations) are left out."""
    if not any(histogram.counts):
        # A window without observations (the common idle case): nothing to sort.
        return {}
    # Sorting, merging and forcing monotonic once serves every quantile of the histogram.
    merged = _prepare(histogram.bounds, histogram.counts)
    if merged is None:
        return {}
    out = {}
    for q in qs:
        v = _quantile(q, merged)
        if not math.isnan(v):
            out[q] = v
    return out


def divergence(p50: float | None, p99: float | None) -> float | None:
    """P99/P50: how far the tail has drifted from the median. None when either is missing or P50 is 0."""
    if p50 is None or p99 is None or p50 <= 0 or not math.isfinite(p50) or not math.isfinite(p99):
        return None
    return p99 / p50


def merge(histograms: Iterable[Histogram]) -> Histogram | None:
    """Sum histograms that share bounds (PromQL `sum by (le)`); None if there are none or bounds differ."""
    items = list(histograms)
    if not items:
        return None
    bounds = items[0].bounds
    if any(h.bounds != bounds for h in items[1:]):
        return None
    return Histogram(
        bounds=bounds,
        counts=tuple(math.fsum(h.counts[i] for h in items) for i in range(len(bounds))),
        count=math.fsum(h.count for h in items),
        sum=math.fsum(h.sum for h in items),
    )


def merge_each(parts: Iterable[Mapping[K, Histogram]]) -> dict[K, Histogram]:
    """Per key, the `merge` of every part's histogram under it (engines, or intervals, taken together).

    A key whose histograms have other bounds from part to part is left out, as `merge` leaves them.
    """
    by_key: dict[K, list[Histogram]] = {}
    for part in parts:
        for key, h in part.items():
            by_key.setdefault(key, []).append(h)
    out = {}
    for key, hs in by_key.items():
        merged = merge(hs)
        if merged is not None:
            out[key] = merged
    return out
