"""The tap's health (pure): acceptance by temperature band from its series (windowed halves, P10/P50/P90,
verdicts), its outcomes and errors, and its coverage of the engine's speculation.

The per-request acceptance percentiles come from the window's increase of the acceptance histogram, computed
exactly as PromQL's `histogram_quantile` would on the same buckets (every 0.025, so within one bucket width of the
sample percentile). Whichever front end wrote the series (the middleware in vLLM, or the proxy tap), this is the
one place they become numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spec_exporter.derive.latency import quantiles
from spec_exporter.derive.verdict import verdict
from spec_exporter.tap.metrics import Outcome
from spec_exporter.types import DeriveParams, TapSample, TemperatureBandKey, TemperatureBandSample, Verdict, Window

PERCENTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
# The outcome the remedy (--per-request-spec-decode-metrics summary) applies to, and the one that proves it works.
MEASURED, NO_SPEC_METRICS = Outcome.MEASURED.value, Outcome.NO_SPEC_METRICS.value


@dataclass(frozen=True, slots=True)
class TemperatureBandWindow:
    window: Window
    requests: float
    accepted: float
    drafted: float
    percentiles: Mapping[float, float]
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class TemperatureBandHealth:
    key: TemperatureBandKey
    totals: TemperatureBandSample
    windows: tuple[TemperatureBandWindow, ...]
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class TapHealth:
    bands: tuple[TemperatureBandHealth, ...]
    requests: Mapping[tuple[str, str], float]
    errors: Mapping[str, float]
    drafted_in_window: Mapping[str, float]
    # Tap drafted / engine drafted per window: the share of the engine's speculation the tap saw.
    coverage: Mapping[str, float]
    # Responses without per-request spec metrics and none with them over the verdict window.
    missing_spec_metrics: bool


def _temperature_band_window(
    window: Window, delta: TemperatureBandSample | None, params: DeriveParams
) -> TemperatureBandWindow:
    if delta is None:
        return TemperatureBandWindow(window, 0.0, 0.0, 0.0, {}, Verdict.INSUFFICIENT_DATA)
    h = delta.acceptance
    rate = delta.accepted_tokens / delta.draft_tokens if delta.draft_tokens > 0 else None
    return TemperatureBandWindow(
        window=window,
        requests=h.count if h is not None else 0.0,
        accepted=delta.accepted_tokens,
        drafted=delta.draft_tokens,
        percentiles=quantiles(h, PERCENTILES) if h is not None else {},
        verdict=verdict(rate, delta.draft_tokens, params.thresholds),
    )


def derive_tap(
    totals: TapSample,
    deltas: Mapping[str, TapSample | None],
    engine_drafted: Mapping[str, float | None],
    params: DeriveParams,
) -> TapHealth:
    """`deltas` and `engine_drafted` (the engine's draft tokens, all engines summed) map each window label."""
    bands = []
    drafted_in_window = {w.label: 0.0 for w in params.windows}
    for key, band_totals in sorted(totals.bands.items()):
        windows = []
        for w in params.windows:
            delta = deltas.get(w.label)
            windows.append(_temperature_band_window(w, delta.bands.get(key) if delta is not None else None, params))
            drafted_in_window[w.label] += windows[-1].drafted
        band_verdict = next(
            (bw.verdict for bw in windows if bw.window.label == params.verdict_window), Verdict.INSUFFICIENT_DATA
        )
        bands.append(TemperatureBandHealth(key, band_totals, tuple(windows), band_verdict))
    coverage = {}
    for label, drafted in drafted_in_window.items():
        engine = engine_drafted.get(label)
        if engine is not None and engine > 0:
            coverage[label] = drafted / engine
    return TapHealth(
        bands=tuple(bands),
        requests=totals.requests,
        errors=totals.errors,
        drafted_in_window=drafted_in_window,
        coverage=coverage,
        missing_spec_metrics=_missing_spec_metrics(deltas.get(params.verdict_window)),
    )


def _missing_spec_metrics(delta: TapSample | None) -> bool:
    if delta is None:
        return False
    seen = {outcome: 0.0 for outcome in (MEASURED, NO_SPEC_METRICS)}
    for (_, outcome), n in delta.requests.items():
        if outcome in seen:
            seen[outcome] += n
    return seen[NO_SPEC_METRICS] > 0 and seen[MEASURED] == 0
