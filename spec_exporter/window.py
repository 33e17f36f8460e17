"""A ring of snapshots per target, and reset-aware deltas over windows of it.

Each snapshot is turned into *totals*: counters as they would read had vLLM never restarted, counted from the
moment the exporter first saw the series. A counter that goes down between two polls means vLLM restarted, so
that step adds nothing (never a negative delta, never the post-restart value as a spike); the totals carry on
from the next step. A window's delta is then one subtraction of totals, whatever happened inside it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from spec_exporter.types import EngineKey, EngineSample, Histogram, LatencyMetric, Snapshot, SpecCounters


@dataclass(frozen=True, slots=True)
class EngineTotals:
    """Reset-free cumulative counters of one engine (or, from `subtract`, their increase over a window)."""

    spec: SpecCounters | None
    histograms: Mapping[LatencyMetric, Histogram]
    generation_tokens: float
    preemptions: float


@dataclass(frozen=True, slots=True)
class Point:
    """One snapshot in the ring with the totals it brought the engines to."""

    snapshot: Snapshot
    totals: Mapping[EngineKey, EngineTotals]
    restarted: frozenset[EngineKey] = frozenset()

    @property
    def taken_at(self) -> float:
        return self.snapshot.taken_at


@dataclass(frozen=True, slots=True)
class WindowDelta:
    """What happened over one window: its real span and each engine's increase."""

    span_seconds: float
    engines: Mapping[EngineKey, EngineTotals]


def _step(previous: float | None, current: float | None) -> float:
    if previous is None or current is None:
        return 0.0
    d = current - previous
    # NaN or infinite readings would poison the totals for good; such a step just adds nothing.
    return d if math.isfinite(d) and d > 0 else 0.0


def _went_down(previous: float | None, current: float | None) -> bool:
    return previous is not None and current is not None and current < previous


def engine_restarted(previous: EngineSample, current: EngineSample) -> bool:
    """True if any counter of the engine went down: vLLM restarted between the two scrapes."""
    ps, cs = previous.spec, current.spec
    if ps is not None and cs is not None:
        if (
            _went_down(ps.drafts, cs.drafts)
            or _went_down(ps.draft_tokens, cs.draft_tokens)
            or _went_down(ps.accepted_tokens, cs.accepted_tokens)
            or any(c < p for p, c in zip(ps.per_position, cs.per_position, strict=False))
            or len(ps.per_position) != len(cs.per_position)
        ):
            return True
    if _went_down(previous.generation_tokens, current.generation_tokens) or _went_down(
        previous.preemptions, current.preemptions
    ):
        return True
    for metric, ch in current.histograms.items():
        ph = previous.histograms.get(metric)
        if ph is None:
            continue
        if (
            ph.bounds != ch.bounds
            or ch.count < ph.count
            or any(c < p for p, c in zip(ph.counts, ch.counts, strict=True))
        ):
            return True
    return False


def _zero_spec(like: SpecCounters) -> SpecCounters:
    return SpecCounters(0.0, 0.0, 0.0, (0.0,) * len(like.per_position))


def _zero_histogram(like: Histogram) -> Histogram:
    return Histogram(like.bounds, (0.0,) * len(like.bounds), 0.0, 0.0)


def initial_totals(sample: EngineSample) -> EngineTotals:
    """Totals for an engine seen for the first time: everything from here on counts."""
    return EngineTotals(
        spec=_zero_spec(sample.spec) if sample.spec is not None else None,
        histograms={m: _zero_histogram(h) for m, h in sample.histograms.items()},
        generation_tokens=0.0,
        preemptions=0.0,
    )


def _carry_spec(
    totals: SpecCounters | None, previous: SpecCounters | None, current: SpecCounters | None, restarted: bool
) -> SpecCounters | None:
    if current is None:
        return None
    if totals is None:
        return _zero_spec(current)
    n = len(current.per_position)
    per_position = tuple(
        (totals.per_position[i] if i < len(totals.per_position) else 0.0)
        + (
            0.0
            if restarted or previous is None or i >= len(previous.per_position)
            else _step(previous.per_position[i], current.per_position[i])
        )
        for i in range(n)
    )
    if restarted or previous is None:
        return SpecCounters(totals.drafts, totals.draft_tokens, totals.accepted_tokens, per_position)
    return SpecCounters(
        drafts=totals.drafts + _step(previous.drafts, current.drafts),
        draft_tokens=totals.draft_tokens + _step(previous.draft_tokens, current.draft_tokens),
        accepted_tokens=totals.accepted_tokens + _step(previous.accepted_tokens, current.accepted_tokens),
        per_position=per_position,
    )


def _carry_histogram(
    totals: Histogram | None, previous: Histogram | None, current: Histogram, restarted: bool
) -> Histogram:
    if totals is None or totals.bounds != current.bounds:
        # New family, or vLLM came back with other buckets (--custom-histogram-buckets): count from here.
        return _zero_histogram(current)
    if restarted or previous is None or previous.bounds != current.bounds:
        return totals
    return Histogram(
        bounds=totals.bounds,
        counts=tuple(t + _step(p, c) for t, p, c in zip(totals.counts, previous.counts, current.counts, strict=True)),
        count=totals.count + _step(previous.count, current.count),
        sum=totals.sum + _step(previous.sum, current.sum),
    )


def advance(previous: Point | None, snapshot: Snapshot) -> Point:
    """The point `snapshot` makes after `previous` (pure)."""
    totals: dict[EngineKey, EngineTotals] = {}
    restarted: set[EngineKey] = set()
    for key, current in snapshot.engines.items():
        prev_sample = previous.snapshot.engines.get(key) if previous is not None else None
        prev_totals = previous.totals.get(key) if previous is not None else None
        if prev_sample is None or prev_totals is None:
            totals[key] = initial_totals(current)
            continue
        reset = engine_restarted(prev_sample, current)
        if reset:
            restarted.add(key)
        totals[key] = EngineTotals(
            spec=_carry_spec(prev_totals.spec, prev_sample.spec, current.spec, reset),
            histograms={
                m: _carry_histogram(prev_totals.histograms.get(m), prev_sample.histograms.get(m), h, reset)
                for m, h in current.histograms.items()
            },
            generation_tokens=prev_totals.generation_tokens
            + (0.0 if reset else _step(prev_sample.generation_tokens, current.generation_tokens)),
            preemptions=prev_totals.preemptions
            + (0.0 if reset else _step(prev_sample.preemptions, current.preemptions)),
        )
    return Point(snapshot=snapshot, totals=totals, restarted=frozenset(restarted))


def _sub_spec(later: SpecCounters | None, earlier: SpecCounters | None) -> SpecCounters | None:
    if later is None:
        return None
    if earlier is None:
        return later
    return SpecCounters(
        drafts=later.drafts - earlier.drafts,
        draft_tokens=later.draft_tokens - earlier.draft_tokens,
        accepted_tokens=later.accepted_tokens - earlier.accepted_tokens,
        per_position=tuple(
            v - (earlier.per_position[i] if i < len(earlier.per_position) else 0.0)
            for i, v in enumerate(later.per_position)
        ),
    )


def _sub_histogram(later: Histogram, earlier: Histogram | None) -> Histogram:
    if earlier is None or earlier.bounds != later.bounds:
        # Totals were re-zeroed inside the window when the bounds changed.
        return later
    return Histogram(
        bounds=later.bounds,
        counts=tuple(a - b for a, b in zip(later.counts, earlier.counts, strict=True)),
        count=later.count - earlier.count,
        sum=later.sum - earlier.sum,
    )


def subtract(later: EngineTotals, earlier: EngineTotals | None) -> EngineTotals:
    """The increase of an engine's totals between two points (pure; never negative)."""
    if earlier is None:
        return later
    return EngineTotals(
        spec=_sub_spec(later.spec, earlier.spec),
        histograms={m: _sub_histogram(h, earlier.histograms.get(m)) for m, h in later.histograms.items()},
        generation_tokens=later.generation_tokens - earlier.generation_tokens,
        preemptions=later.preemptions - earlier.preemptions,
    )


def window_delta(points: Sequence[Point], window_seconds: float, slack_seconds: float) -> WindowDelta | None:
    """Delta from the oldest point within `window_seconds` (+ slack for poll jitter) to the newest one.

    None when the window holds a single point: there is nothing to compare yet.
    """
    if len(points) < 2:
        return None
    latest = points[-1]
    base = None
    for p in points:
        if latest.taken_at - p.taken_at <= window_seconds + slack_seconds:
            base = p
            break
    if base is None or base is latest:
        return None
    return WindowDelta(
        span_seconds=latest.taken_at - base.taken_at,
        engines={key: subtract(t, base.totals.get(key)) for key, t in latest.totals.items()},
    )


class SnapshotRing:
    """The poller's per-target history: enough points to cover the longest window."""

    def __init__(self, keep_seconds: float) -> None:
        self._keep = keep_seconds
        self._points: deque[Point] = deque()

    def push(self, snapshot: Snapshot) -> Point:
        point = advance(self._points[-1] if self._points else None, snapshot)
        self._points.append(point)
        while self._points and point.taken_at - self._points[0].taken_at > self._keep:
            self._points.popleft()
        return point

    @property
    def points(self) -> Sequence[Point]:
        return tuple(self._points)
