"""A ring of snapshots per target, and reset-aware deltas over windows of it.

Each snapshot is turned into *totals*: counters as they would read had vLLM never restarted, counted from the
moment the exporter first saw the series. A counter that goes down between two polls means vLLM restarted, so
that step adds nothing (never a negative delta, never the post-restart value as a spike); the totals carry on
from the next step. A window's delta is then one subtraction of totals, whatever happened inside it.

A series missing from one scrape is missing, not zero: its totals and its last reading are kept, and the next
scrape that has it again steps from that reading. So a gap, an engine that drops out for a poll or interleaved
families never bring totals down. A switch between vLLM's V1 and V0 layouts is a restart (two layouts are two
processes): each engine of either layout steps from nothing when it comes back.

The engines' counters and the tap's are stitched by one routine (`stitch`), on one flat shape (`Readings`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from spec_exporter.types import (
    EngineKey,
    EngineSample,
    Histogram,
    LatencyMetric,
    Snapshot,
    SpecCounters,
    TapSample,
    TemperatureBandKey,
    TemperatureBandSample,
)


@dataclass(frozen=True, slots=True)
class EngineTotals:
    """Reset-free cumulative counters of one engine (or, in a `WindowDelta`, their increase over a window)."""

    spec: SpecCounters | None
    histograms: Mapping[LatencyMetric, Histogram]
    generation_tokens: float
    preemptions: float


@dataclass(frozen=True, slots=True)
class Point:
    """One snapshot in the ring with the totals it brought the engines (and the tap's series) to.

    `totals` keeps engines that this snapshot lacks; what is exported comes from `snapshot.engines` only.
    `sources` is the stitching's own state: per engine (and the tap) its totals and the last reading of every
    series, for the next step.
    """

    snapshot: Snapshot
    totals: Mapping[EngineKey, EngineTotals]
    restarted: frozenset[EngineKey] = frozenset()
    tap: TapSample | None = None
    sources: Mapping[Hashable, Stitched] = field(default_factory=dict)

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


@dataclass(frozen=True, slots=True)
class Readings:
    """Every counter series of one source (an engine, or the tap) in one scrape, flat by key.

    The one shape restart stitching works on, whichever source the series come from.
    """

    counters: Mapping[Hashable, float] = field(default_factory=dict)
    histograms: Mapping[Hashable, Histogram] = field(default_factory=dict)


_NOTHING = Readings()


def went_down(last: Readings, current: Readings) -> bool:
    """True if any counter or bucket fell below its last reading, or a histogram came back on other buckets:
    the process holding the series restarted between the two scrapes."""
    for key, value in current.counters.items():
        before = last.counters.get(key)
        if before is not None and value < before:
            return True
    for key, h in current.histograms.items():
        p = last.histograms.get(key)
        if p is not None and (
            p.bounds != h.bounds or h.count < p.count or any(c < b for b, c in zip(p.counts, h.counts, strict=True))
        ):
            return True
    return False


def _zero_histogram(like: Histogram) -> Histogram:
    return Histogram(like.bounds, (0.0,) * len(like.bounds), 0.0, 0.0)


def _carry_histogram(totals: Histogram, previous: Histogram | None, current: Histogram, reset: bool) -> Histogram:
    if totals.bounds != current.bounds:
        # vLLM came back with other buckets (--custom-histogram-buckets): count from here.
        return _zero_histogram(current)
    if reset or previous is None or previous.bounds != current.bounds:
        return totals
    return Histogram(
        bounds=totals.bounds,
        counts=tuple(t + _step(p, c) for t, p, c in zip(totals.counts, previous.counts, current.counts, strict=True)),
        count=totals.count + _step(previous.count, current.count),
        sum=totals.sum + _step(previous.sum, current.sum),
    )


@dataclass(frozen=True, slots=True)
class Stitched:
    """A source's running totals and the last reading of each of its series (None: forgotten)."""

    totals: Readings
    last: Readings | None


def stitch(known: Stitched | None, current: Readings, reset: bool, *, new_from_zero: bool) -> Stitched:
    """One step of restart stitching of one source (an engine, or the tap): its new totals and last readings.

    `known` None: the source is seen for the first time, everything from here on counts. Its `last` None: its
    readings were forgotten (a layout switch, another process), so this step only re-reads them. A `reset` step
    adds nothing. A series missing from `current` keeps its totals and its last reading. A series new to a source
    already seen counts from here, or, with `new_from_zero`, all of its value (prometheus_client creates a
    labelled series at its first increment, so it started at zero since the last poll).
    """
    if known is None:
        zero = Readings(
            {k: 0.0 for k in current.counters}, {k: _zero_histogram(h) for k, h in current.histograms.items()}
        )
        return Stitched(zero, current)
    totals = known.totals
    before = known.last if known.last is not None else _NOTHING
    grow = new_from_zero and not reset
    counters = dict(totals.counters)
    for key, value in current.counters.items():
        running = totals.counters.get(key)
        if running is None:
            counters[key] = _step(0.0, value) if grow else 0.0
        elif not reset:
            counters[key] = running + _step(before.counters.get(key), value)
    histograms = dict(totals.histograms)
    for key, h in current.histograms.items():
        running_h, previous = totals.histograms.get(key), before.histograms.get(key)
        if running_h is None:
            running_h = _zero_histogram(h)
            previous = running_h if grow else None
        histograms[key] = _carry_histogram(running_h, previous, h, reset)
    seen = Readings({**before.counters, **current.counters}, {**before.histograms, **current.histograms})
    return Stitched(Readings(counters, histograms), seen)


# --- engines: their samples as Readings and back ---------------------------------------------------------------

_POSITION = "position"


def _engine_readings(sample: EngineSample) -> Readings:
    counters: dict[Hashable, float] = {}
    spec = sample.spec
    if spec is not None:
        counters.update(drafts=spec.drafts, draft_tokens=spec.draft_tokens, accepted_tokens=spec.accepted_tokens)
        counters.update({(_POSITION, i): v for i, v in enumerate(spec.per_position)})
    if sample.generation_tokens is not None:
        counters["generation_tokens"] = sample.generation_tokens
    if sample.preemptions is not None:
        counters["preemptions"] = sample.preemptions
    return Readings(counters, cast("Mapping[Hashable, Histogram]", sample.histograms))


def _positions(r: Readings) -> int | None:
    """How many per-position counters the readings have; None without spec-decode counters."""
    return sum(1 for k in r.counters if isinstance(k, tuple) and k[0] == _POSITION) if "drafts" in r.counters else None


def _engine_totals(r: Readings) -> EngineTotals:
    c = r.counters
    positions = _positions(r) or 0
    spec = (
        SpecCounters(
            c["drafts"],
            c["draft_tokens"],
            c["accepted_tokens"],
            tuple(c.get((_POSITION, i), 0.0) for i in range(positions)),
        )
        if "drafts" in c
        else None
    )
    histograms = cast("Mapping[LatencyMetric, Histogram]", r.histograms)
    return EngineTotals(spec, histograms, c.get("generation_tokens", 0.0), c.get("preemptions", 0.0))


def _only_positions_below(r: Readings, n: int) -> Readings:
    kept = {k: v for k, v in r.counters.items() if not (isinstance(k, tuple) and k[0] == _POSITION and k[1] >= n)}
    return Readings(kept, r.histograms)


def engine_restarted(last: Readings, current: Readings) -> bool:
    """True if any counter of the engine went down, or its number of speculative positions changed."""
    before, now = _positions(last), _positions(current)
    return went_down(last, current) or (before is not None and now is not None and before != now)


# --- the tap: its sample as Readings and back --------------------------------------------------------------------

_BAND_COUNTERS = ("accepted_tokens", "draft_tokens")
_BAND_HISTOGRAMS = ("acceptance", "ttft", "tpot")


def _tap_readings(tap: TapSample) -> Readings:
    counters: dict[Hashable, float] = {}
    histograms: dict[Hashable, Histogram] = {}
    for key, band in tap.bands.items():
        for name in _BAND_COUNTERS:
            counters[(name, key)] = getattr(band, name)
        for name in _BAND_HISTOGRAMS:
            h = getattr(band, name)
            if h is not None:
                histograms[(name, key)] = h
    counters.update({("requests", k): v for k, v in tap.requests.items()})
    counters.update({("errors", k): v for k, v in tap.errors.items()})
    return Readings(counters, histograms)


def _tap_totals(r: Readings) -> TapSample:
    bands: dict[TemperatureBandKey, TemperatureBandSample] = {}
    requests: dict[tuple[str, str], float] = {}
    errors: dict[str, float] = {}
    for (kind, key), value in cast("Mapping[tuple[str, Any], float]", r.counters).items():
        if kind == "requests":
            requests[key] = value
        elif kind == "errors":
            errors[key] = value
        elif kind == "accepted_tokens":
            bands[key] = TemperatureBandSample(
                value, r.counters[("draft_tokens", key)], *(r.histograms.get((n, key)) for n in _BAND_HISTOGRAMS)
            )
    return TapSample(bands=bands, requests=requests, errors=errors)


# --- one step for every source ------------------------------------------------------------------------------------

_TAP = "tap"


def advance(previous: Point | None, snapshot: Snapshot) -> Point:
    """The point `snapshot` makes after `previous` (pure)."""
    sources: dict[Hashable, Stitched] = dict(previous.sources) if previous is not None else {}
    totals: dict[EngineKey, EngineTotals] = dict(previous.totals) if previous is not None else {}
    restarted: set[EngineKey] = set()
    before = previous.snapshot if previous is not None else None
    # A new process behind the URL is a restart even when its counters already passed the old ones.
    new_process = (
        before is not None
        and before.process_start is not None
        and snapshot.process_start is not None
        and snapshot.process_start != before.process_start
    )
    if before is not None and before.generation is not snapshot.generation:
        # V1 and V0 cannot be the same process: a layout switch is a restart, for the engines of either layout
        # whenever they come back.
        sources = {k: Stitched(s.totals, None) if k != _TAP else s for k, s in sources.items()}
    for key, current in snapshot.engines.items():
        readings = _engine_readings(current)
        known = sources.get(key)
        reset = known is not None and (new_process or known.last is None or engine_restarted(known.last, readings))
        if reset:
            restarted.add(key)
        stitched = stitch(known, readings, reset, new_from_zero=False)
        if current.spec is not None:
            # A new k (a restart) drops the positions beyond it, as the engine's own series did.
            n = len(current.spec.per_position)
            stitched = Stitched(
                _only_positions_below(stitched.totals, n), _only_positions_below(stitched.last or _NOTHING, n)
            )
        sources[key] = stitched
        totals[key] = _engine_totals(stitched.totals)
    tap = previous.tap if previous is not None else None
    if snapshot.tap is not None:
        readings = _tap_readings(snapshot.tap)
        known = sources.get(_TAP)
        reset = known is not None and (known.last is None or went_down(known.last, readings))
        sources[_TAP] = stitch(known, readings, reset, new_from_zero=True)
        tap = _tap_totals(sources[_TAP].totals)
    return Point(snapshot, totals, frozenset(restarted), tap, sources)


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


def histogram_increase(later: Histogram | None, earlier: Histogram | None) -> Histogram | None:
    """The increase of a histogram's totals between two points; None where the later point has none."""
    return _sub_histogram(later, earlier) if later is not None else None


def _increase(later: Readings, earlier: Readings | None) -> Readings:
    """The increase of a source's totals between two points (never negative: totals never go down)."""
    if earlier is None:
        return later
    return Readings(
        {k: v - earlier.counters.get(k, 0.0) for k, v in later.counters.items()},
        {k: _sub_histogram(h, earlier.histograms.get(k)) for k, h in later.histograms.items()},
    )


def window_base(points: Sequence[Point], window_seconds: float, slack_seconds: float) -> int | None:
    """Index of the point a window starts at: the oldest within `window_seconds` (+ slack for poll jitter).

    None when that is the newest point itself: there is nothing to compare yet. Every window of the exporter
    (deltas, loads) starts where this says, so they cover the same time.
    """
    if len(points) < 2:
        return None
    latest = points[-1].taken_at
    for i, p in enumerate(points[:-1]):
        if latest - p.taken_at <= window_seconds + slack_seconds:
            return i
    return None


def window_delta(points: Sequence[Point], window_seconds: float, slack_seconds: float) -> WindowDelta | None:
    """Delta from the point `window_base` picks to the newest one; None when the window holds a single point."""
    i = window_base(points, window_seconds, slack_seconds)
    if i is None:
        return None
    base, latest = points[i], points[-1]

    def increase(key: Hashable) -> Readings:
        earlier = base.sources.get(key)
        return _increase(latest.sources[key].totals, earlier.totals if earlier is not None else None)

    engines = {key: _engine_totals(increase(key)) for key in latest.totals}
    tap = _tap_totals(increase(_TAP)) if latest.tap is not None else None
    return WindowDelta(span_seconds=latest.taken_at - base.taken_at, engines=engines, tap=tap)


class SnapshotRing:
    """The poller's per-target history: enough points to cover the longest window."""

    def __init__(self, keep_seconds: float) -> None:
        self._keep = keep_seconds
        self._points: deque[Point] = deque()
        self._forgotten: Point | None = None

    def push(self, snapshot: Snapshot) -> Point:
        point = advance(self._points[-1] if self._points else self._forgotten, snapshot)
        self._forgotten = None
        self._points.append(point)
        while self._points and point.taken_at - self._points[0].taken_at > self._keep:
            self._points.popleft()
        return point

    @property
    def points(self) -> Sequence[Point]:
        return tuple(self._points)

    def forget(self) -> None:
        """Start every window again from the next snapshot, as after a restart, keeping the totals.

        For a URL whose readings cannot be differenced (several processes behind it): the windows start afresh,
        and the exported counters carry on from where they were instead of going down to zero.
        """
        if self._points:
            last = self._points[-1]
            forgotten = {k: Stitched(s.totals, None) for k, s in last.sources.items()}
            self._forgotten = replace(last, sources=forgotten)
            self._points.clear()
