"""A ring of snapshots per target, and reset-aware deltas over windows of it.

Each snapshot is turned into *totals*: counters as they would read had vLLM never restarted, counted from the
moment the exporter first saw the series. A counter that goes down between two polls means vLLM restarted, so
that step adds nothing (never a negative delta, never the post-restart value as a spike); the totals carry on
from the next step. A window's delta is then one subtraction of totals, whatever happened inside it.

A series missing from one scrape is missing, not zero: its totals and its last reading are kept, and the next
scrape that has it again steps from that reading. So a gap, an engine that drops out for a poll, interleaved
families or a V0/V1 switch never bring totals down.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spec_exporter.types import (
    BandKey,
    BandSample,
    EngineKey,
    EngineSample,
    Histogram,
    LatencyMetric,
    Snapshot,
    SpecCounters,
    TapSample,
)


@dataclass(frozen=True, slots=True)
class EngineTotals:
    """Reset-free cumulative counters of one engine (or, from `subtract`, their increase over a window)."""

    spec: SpecCounters | None
    histograms: Mapping[LatencyMetric, Histogram]
    generation_tokens: float
    preemptions: float


@dataclass(frozen=True, slots=True)
class Point:
    """One snapshot in the ring with the totals it brought the engines (and the tap's series) to.

    `totals` and `seen` (the last reading of every series, for the next step) keep engines that this snapshot
    lacks; what is exported comes from `snapshot.engines` only.
    """

    snapshot: Snapshot
    totals: Mapping[EngineKey, EngineTotals]
    restarted: frozenset[EngineKey] = frozenset()
    seen: Mapping[EngineKey, EngineSample] = field(default_factory=dict)
    tap: TapSample | None = None
    tap_seen: TapSample | None = None

    @property
    def taken_at(self) -> float:
        return self.snapshot.taken_at


@dataclass(frozen=True, slots=True)
class WindowDelta:
    """What happened over one window: its real span and each engine's increase."""

    span_seconds: float
    engines: Mapping[EngineKey, EngineTotals]
    tap: TapSample | None = None


def _step(previous: float | None, current: float | None) -> float:
    if previous is None or current is None:
        return 0.0
    d = current - previous
    # NaN or infinite readings would poison the totals for good; such a step just adds nothing.
    return d if math.isfinite(d) and d > 0 else 0.0


def _went_down(previous: float | None, current: float | None) -> bool:
    return previous is not None and current is not None and current < previous


def _spec_went_down(ps: SpecCounters | None, cs: SpecCounters | None) -> bool:
    return (
        ps is not None
        and cs is not None
        and (
            _went_down(ps.drafts, cs.drafts)
            or _went_down(ps.draft_tokens, cs.draft_tokens)
            or _went_down(ps.accepted_tokens, cs.accepted_tokens)
            or any(c < p for p, c in zip(ps.per_position, cs.per_position, strict=False))
            or len(ps.per_position) != len(cs.per_position)
        )
    )


def engine_restarted(previous: EngineSample, current: EngineSample) -> bool:
    """True if any counter of the engine went down: vLLM restarted between the two scrapes."""
    if _spec_went_down(previous.spec, current.spec):
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
        return totals
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


def _seen(previous: EngineSample, current: EngineSample) -> EngineSample:
    """The last reading of every counter series: this scrape's where it has one, else the one before."""
    return EngineSample(
        spec=current.spec if current.spec is not None else previous.spec,
        lifetime_acceptance=current.lifetime_acceptance,
        histograms={**previous.histograms, **current.histograms},
        generation_tokens=_either(current.generation_tokens, previous.generation_tokens),
        preemptions=_either(current.preemptions, previous.preemptions),
        requests_running=current.requests_running,
        requests_waiting=current.requests_waiting,
        kv_cache_usage=current.kv_cache_usage,
    )


def _either(current: float | None, previous: float | None) -> float | None:
    return current if current is not None else previous


def _engine_step(totals: EngineTotals, previous: EngineSample, current: EngineSample, reset: bool) -> EngineTotals:
    histograms = dict(totals.histograms)
    for m, h in current.histograms.items():
        histograms[m] = _carry_histogram(totals.histograms.get(m), previous.histograms.get(m), h, reset)
    return EngineTotals(
        spec=_carry_spec(totals.spec, previous.spec, current.spec, reset),
        histograms=histograms,
        generation_tokens=totals.generation_tokens
        + (0.0 if reset else _step(previous.generation_tokens, current.generation_tokens)),
        preemptions=totals.preemptions + (0.0 if reset else _step(previous.preemptions, current.preemptions)),
    )


def advance(previous: Point | None, snapshot: Snapshot) -> Point:
    """The point `snapshot` makes after `previous` (pure)."""
    totals: dict[EngineKey, EngineTotals] = dict(previous.totals) if previous is not None else {}
    seen: dict[EngineKey, EngineSample] = dict(previous.seen) if previous is not None else {}
    restarted: set[EngineKey] = set()
    # A new process behind the URL is a restart even when its counters already passed the old ones.
    before = previous.snapshot.process_start if previous is not None else None
    new_process = before is not None and snapshot.process_start is not None and snapshot.process_start != before
    for key, current in snapshot.engines.items():
        last, running = seen.get(key), totals.get(key)
        if last is None or running is None:
            totals[key], seen[key] = initial_totals(current), current
            continue
        reset = new_process or engine_restarted(last, current)
        if reset:
            restarted.add(key)
        totals[key], seen[key] = _engine_step(running, last, current, reset), _seen(last, current)
    tap, tap_seen = _advance_tap(
        previous.tap if previous is not None else None,
        previous.tap_seen if previous is not None else None,
        snapshot.tap,
    )
    return Point(snapshot, totals, frozenset(restarted), seen, tap, tap_seen)


def _tap_restarted(previous: TapSample, current: TapSample) -> bool:
    """Any tap counter or histogram count that went down: the process holding the series restarted."""
    for mapping_name in ("requests", "errors"):
        before, now = getattr(previous, mapping_name), getattr(current, mapping_name)
        if any(k in before and v < before[k] for k, v in now.items()):
            return True
    for key, band in current.bands.items():
        old = previous.bands.get(key)
        if old is None:
            continue
        if band.accepted_tokens < old.accepted_tokens or band.draft_tokens < old.draft_tokens:
            return True
        if _spec_went_down(old.spec, band.spec):
            return True
        for name in _BAND_HISTOGRAMS:
            h, oh = getattr(band, name), getattr(old, name)
            if h is not None and oh is not None and (h.bounds != oh.bounds or h.count < oh.count):
                return True
    return False


def _carry_counts(
    totals: Mapping[Any, float], previous: Mapping[Any, float], current: Mapping[Any, float], reset: bool
) -> dict[Any, float]:
    out = dict(totals)
    for key, value in current.items():
        if key not in previous:
            # A labelled prometheus_client series appears at its first increment, from zero: count all of it.
            out[key] = totals.get(key, 0.0) + (0.0 if reset or not math.isfinite(value) else max(value, 0.0))
        else:
            out[key] = totals.get(key, 0.0) + (0.0 if reset else _step(previous[key], value))
    return out


_BAND_HISTOGRAMS = ("acceptance", "ttft", "tpot")


def _zero_band(like: BandSample) -> BandSample:
    acceptance, ttft, tpot = (_zero_or_none(getattr(like, n)) for n in _BAND_HISTOGRAMS)
    spec = _zero_spec(like.spec) if like.spec is not None else None
    return BandSample(0.0, 0.0, acceptance, ttft, tpot, spec)


def _carry_band(total: BandSample | None, previous: BandSample | None, current: BandSample, reset: bool) -> BandSample:
    if total is None or previous is None:
        # New in a tap already seen: prometheus_client creates a labelled series at its first observation, so
        # the series started at zero since the last poll.
        total = previous = _zero_band(current)
    hists = []
    for name in _BAND_HISTOGRAMS:
        h, th, ph = getattr(current, name), getattr(total, name), getattr(previous, name)
        if h is None:
            hists.append(th)
            continue
        zero = _zero_histogram(h)
        hists.append(_carry_histogram(th or zero, ph or zero, h, reset))

    def stepped(name: str) -> float:
        running: float = getattr(total, name)
        return running + (0.0 if reset else _step(getattr(previous, name), getattr(current, name)))

    acceptance, ttft, tpot = hists
    spec = _carry_spec(total.spec, previous.spec, current.spec, reset)
    return BandSample(stepped("accepted_tokens"), stepped("draft_tokens"), acceptance, ttft, tpot, spec)


def _zero_or_none(h: Histogram | None) -> Histogram | None:
    return _zero_histogram(h) if h is not None else None


def _advance_tap(
    totals: TapSample | None, last: TapSample | None, current: TapSample | None
) -> tuple[TapSample | None, TapSample | None]:
    if current is None:
        return totals, last
    if totals is None or last is None:
        # The first sight of the tap's series: count from here, like an engine first seen.
        zero = TapSample(
            bands={k: _zero_band(b) for k, b in current.bands.items()},
            requests={k: 0.0 for k in current.requests},
            errors={k: 0.0 for k in current.errors},
        )
        return zero, current
    reset = _tap_restarted(last, current)
    bands: dict[BandKey, BandSample] = dict(totals.bands)
    for key, band in current.bands.items():
        bands[key] = _carry_band(totals.bands.get(key), last.bands.get(key), band, reset)
    new_totals = TapSample(
        bands=bands,
        requests=_carry_counts(totals.requests, last.requests, current.requests, reset),
        errors=_carry_counts(totals.errors, last.errors, current.errors, reset),
    )
    seen = TapSample(
        bands={**last.bands, **current.bands},
        requests={**last.requests, **current.requests},
        errors={**last.errors, **current.errors},
    )
    return new_totals, seen


def spec_increase(later: SpecCounters | None, earlier: SpecCounters | None) -> SpecCounters | None:
    """`later` − `earlier`, positions aligned from 0 (a position `earlier` lacks counts from 0)."""
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
        spec=spec_increase(later.spec, earlier.spec),
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
        tap=subtract_tap(latest.tap, base.tap),
    )


def histogram_increase(later: Histogram | None, earlier: Histogram | None) -> Histogram | None:
    """The increase of a histogram's totals between two points; None where the later point has none."""
    return _sub_histogram(later, earlier) if later is not None else None


def subtract_tap(later: TapSample | None, earlier: TapSample | None) -> TapSample | None:
    """The increase of the tap's totals between two points (pure; never negative)."""
    if later is None or earlier is None:
        return later
    bands = {}
    for key, b in later.bands.items():
        e = earlier.bands.get(key)
        if e is None:
            bands[key] = b
            continue
        bands[key] = BandSample(
            accepted_tokens=b.accepted_tokens - e.accepted_tokens,
            draft_tokens=b.draft_tokens - e.draft_tokens,
            acceptance=histogram_increase(b.acceptance, e.acceptance),
            ttft=histogram_increase(b.ttft, e.ttft),
            tpot=histogram_increase(b.tpot, e.tpot),
            spec=spec_increase(b.spec, e.spec),
        )
    return TapSample(
        bands=bands,
        requests={k: v - earlier.requests.get(k, 0.0) for k, v in later.requests.items()},
        errors={k: v - earlier.errors.get(k, 0.0) for k, v in later.errors.items()},
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
