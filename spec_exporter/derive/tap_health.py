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

from spec_exporter.derive import cost as cost_model
from spec_exporter.derive.acceptance import acceptance
from spec_exporter.derive.cost import BestK, StepCost
from spec_exporter.derive.latency import quantiles
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
    # The band's acceptance length (1 + accepted / steps from the tap; without its step count, 1 + k_eff·r with the
    # engine's k_eff) and AL / rho at the engine's current load.
    acceptance_length: float | None = None
    expected_speedup: float | None = None
    # The best k for the band's requests from their per-position acceptance (vLLM's acceptance_histogram).
    recommended: BestK | None = None


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
    # The engine's speculative configuration as (label, value) pairs, when the tap exports it.
    speculative: tuple[tuple[str, str], ...] | None = None


def _temperature_band_window(
    window: Window, delta: TemperatureBandSample | None, params: DeriveParams, cost: StepCost | None
) -> TemperatureBandWindow:
    if delta is None:
        return TemperatureBandWindow(window, 0.0, 0.0, 0.0, {}, Verdict.INSUFFICIENT_DATA)
    h = delta.acceptance
    rate = delta.accepted_tokens / delta.draft_tokens if delta.draft_tokens > 0 else None
    # The band's requests ran in the engine's batches: the engine's step cost at its load (whatever its source, a
    # baseline's rho = AL·TPOT_spec/TPOT_base included) is theirs too, priced for the k the band drafted.
    spec = delta.spec if delta.spec is not None and delta.spec.drafts > 0 else None
    length = None
    recommended = None
    if spec is not None:
        length = acceptance(spec).mean_length
        if cost is not None:
            band_k = spec.draft_tokens / spec.drafts
            cost = StepCost(cost_model.rho_for(band_k, cost), cost.source, band_k, cost.load, cost.note)
            recommended = cost_model.best_k(spec.per_position, spec.drafts, spec.draft_tokens, cost)
    elif cost is not None and rate is not None:
        length = 1.0 + cost.k * rate
    speedup = cost_model.speedup(length, cost) if cost is not None and length is not None else None
    return TemperatureBandWindow(
        window=window,
        requests=h.count if h is not None else 0.0,
        accepted=delta.accepted_tokens,
        drafted=delta.draft_tokens,
        percentiles=quantiles(h, PERCENTILES) if h is not None else {},
        verdict=cost_model.verdict(rate, delta.draft_tokens, speedup, cost, params.thresholds),
        acceptance_length=length,
        expected_speedup=speedup,
        recommended=recommended,
    )


def derive_tap(
    totals: TapSample,
    deltas: Mapping[str, TapSample | None],
    engine_drafted: Mapping[str, float | None],
    params: DeriveParams,
    costs: Mapping[str, StepCost | None] | None = None,
    speculative: tuple[tuple[str, str], ...] | None = None,
) -> TapHealth:
    """`deltas`, `engine_drafted` (the engine's draft tokens, all engines summed) and `costs` (the engines' step
    cost at their load) map each window label."""
    bands = []
    drafted_in_window = {w.label: 0.0 for w in params.windows}
    for key, band_totals in sorted(totals.bands.items()):
        windows = []
        for w in params.windows:
            delta = deltas.get(w.label)
            band = delta.bands.get(key) if delta is not None else None
            windows.append(_temperature_band_window(w, band, params, (costs or {}).get(w.label)))
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
        speculative=speculative,
    )


def _missing_spec_metrics(delta: TapSample | None) -> bool:
    if delta is None:
        return False
    seen = {outcome: 0.0 for outcome in (MEASURED, NO_SPEC_METRICS)}
    for (_, outcome), n in delta.requests.items():
        if outcome in seen:
            seen[outcome] += n
    return seen[NO_SPEC_METRICS] > 0 and seen[MEASURED] == 0
