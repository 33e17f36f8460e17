"""Percentiles of a sample of per-request values (pure)."""

from __future__ import annotations

import math

PERCENTILES: tuple[float, ...] = (0.1, 0.5, 0.9)


def percentiles(values: list[float], qs: tuple[float, ...] = PERCENTILES) -> dict[float, float]:
    """Sample percentiles with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return {}
    ordered = sorted(values)
    last = len(ordered) - 1
    out = {}
    for q in qs:
        position = q * last
        lo = math.floor(position)
        hi = min(lo + 1, last)
        out[q] = ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)
    return out
