"""What the tap has seen: per-request observations folded into counters and histograms, plus a short history
for windowed percentiles. The proxy writes; the collector reads an immutable `TapSnapshot` at scrape time."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from spec_exporter.derive.sample import percentiles
from spec_exporter.derive.verdict import verdict
from spec_exporter.tap.bands import Bands
from spec_exporter.types import Histogram, Thresholds, Verdict, Window

# Per-request acceptance buckets: 0.5 and 0.65 are the verdict thresholds, so each side is countable.
ACCEPTANCE_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0)
# vLLM's own default TTFT and ITL/TPOT buckets, so tap and engine histograms line up.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TPOT_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
OTHER_MODEL = "other"
REMEDY = "--per-request-spec-decode-metrics summary"


class Outcome(StrEnum):
    """What became of a completion request that went through the tap: the closed set of `outcome` values."""

    MEASURED = "measured"
    NO_SPEC_METRICS = "no_spec_metrics"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_DISCONNECTED = "client_disconnected"
    NOT_UNDERSTOOD = "not_understood"


class ErrorStage(StrEnum):
    REQUEST = "request"
    RESPONSE = "response"
    INTERNAL = "internal"


@dataclass(slots=True)
class _Histogram:
    bounds: tuple[float, ...]
    buckets: list[int] = field(default_factory=list)  # per bucket, not cumulative; last is +Inf
    count: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.buckets = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # Prometheus buckets are upper-inclusive: value == bound lands in that bucket.
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def frozen(self) -> Histogram:
        cumulative, running = [], 0
        for n in self.buckets:
            running += n
            cumulative.append(float(running))
        return Histogram((*self.bounds, math.inf), tuple(cumulative), float(self.count), self.sum)


@dataclass(slots=True)
class _Series:
    acceptance: _Histogram = field(default_factory=lambda: _Histogram(ACCEPTANCE_BUCKETS))
    ttft: _Histogram = field(default_factory=lambda: _Histogram(TTFT_BUCKETS))
    tpot: _Histogram = field(default_factory=lambda: _Histogram(TPOT_BUCKETS))
    accepted: int = 0
    drafted: int = 0
    # (time, accepted, drafted) of measured requests, oldest first, for the windows.
    recent: deque[tuple[float, int, int]] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class BandWindow:
    window: Window
    requests: int
    accepted: int
    drafted: int
    percentiles: Mapping[float, float]
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class BandSnapshot:
    model: str
    band: str
    acceptance: Histogram
    ttft: Histogram
    tpot: Histogram
    accepted: int
    drafted: int
    windows: tuple[BandWindow, ...]
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class TapSnapshot:
    target: str
    series: tuple[BandSnapshot, ...]
    requests: Mapping[tuple[str, Outcome], int]
    errors: Mapping[ErrorStage, int]
    drafted_in_window: Mapping[str, int]
    missing_spec_metrics: bool


class TapRecorder:
    def __init__(
        self,
        target: str,
        bands: Bands,
        windows: tuple[Window, ...],
        thresholds: Thresholds,
        *,
        verdict_window: str,
        clock: Callable[[], float],
        max_models: int = 20,
        max_recent: int = 100_000,
    ) -> None:
        self.target = target
        self.bands = bands
        self._windows = windows
        self._keep = max(w.seconds for w in windows)
        self._thresholds = thresholds
        self._verdict_window = verdict_window
        self._clock = clock
        self._max_models = max_models
        self._max_recent = max_recent
        self._models: set[str] = set()
        self._series: dict[tuple[str, str], _Series] = {}
        self._requests: dict[tuple[str, Outcome], int] = {}
        self._errors: dict[ErrorStage, int] = dict.fromkeys(ErrorStage, 0)
        self.missing_spec_metrics = False

    def model_label(self, model: str | None) -> str:
        """Served model names become labels up to a cap; the rest share `other`, so cardinality stays bounded."""
        if model is None:
            return OTHER_MODEL
        if model in self._models:
            return model
        if len(self._models) < self._max_models:
            self._models.add(model)
            return model
        return OTHER_MODEL

    def count(self, band: str, outcome: Outcome) -> None:
        key = (band, outcome)
        self._requests[key] = self._requests.get(key, 0) + 1

    def error(self, stage: ErrorStage) -> None:
        self._errors[stage] += 1

    def measured(
        self, model: str | None, band: str, accepted: int, drafted: int, ttft: float | None, tpot: float | None
    ) -> None:
        series = self._series_for(model, band)
        series.accepted += accepted
        series.drafted += drafted
        if drafted > 0:
            series.acceptance.observe(accepted / drafted)
            series.recent.append((self._clock(), accepted, drafted))
            if len(series.recent) > self._max_recent:
                series.recent.popleft()
        self.latency(model, band, ttft, tpot)
        self.count(band, Outcome.MEASURED)

    def latency(self, model: str | None, band: str, ttft: float | None, tpot: float | None) -> None:
        series = self._series_for(model, band)
        if ttft is not None:
            series.ttft.observe(ttft)
        if tpot is not None:
            series.tpot.observe(tpot)

    def _series_for(self, model: str | None, band: str) -> _Series:
        key = (self.model_label(model), band)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        return series

    def snapshot(self) -> TapSnapshot:
        now = self._clock()
        out = []
        drafted_in_window = dict.fromkeys((w.label for w in self._windows), 0)
        for (model, band), s in sorted(self._series.items()):
            while s.recent and now - s.recent[0][0] > self._keep:
                s.recent.popleft()
            windows = []
            for w in self._windows:
                inside = [(a, d) for t, a, d in s.recent if now - t <= w.seconds]
                accepted = sum(a for a, _ in inside)
                drafted = sum(d for _, d in inside)
                drafted_in_window[w.label] += drafted
                rates = [a / d for a, d in inside]
                windows.append(
                    BandWindow(
                        window=w,
                        requests=len(inside),
                        accepted=accepted,
                        drafted=drafted,
                        percentiles=percentiles(rates),
                        verdict=verdict(accepted / drafted if drafted else None, drafted, self._thresholds),
                    )
                )
            out.append(
                BandSnapshot(
                    model=model,
                    band=band,
                    acceptance=s.acceptance.frozen(),
                    ttft=s.ttft.frozen(),
                    tpot=s.tpot.frozen(),
                    accepted=s.accepted,
                    drafted=s.drafted,
                    windows=tuple(windows),
                    verdict=next(
                        (w.verdict for w in windows if w.window.label == self._verdict_window),
                        Verdict.INSUFFICIENT_DATA,
                    ),
                )
            )
        return TapSnapshot(
            target=self.target,
            series=tuple(out),
            requests=dict(self._requests),
            errors=dict(self._errors),
            drafted_in_window=drafted_in_window,
            missing_spec_metrics=self.missing_spec_metrics,
        )
