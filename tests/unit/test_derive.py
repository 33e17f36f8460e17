"""Derivations with hand-computed expectations."""

from __future__ import annotations

import math

import pytest

from spec_exporter.derive.acceptance import acceptance
from spec_exporter.derive.baseline import compare
from spec_exporter.derive.cost import verdict as cost_verdict
from spec_exporter.derive.health import derive_target
from spec_exporter.derive.latency import divergence, histogram_quantile, merge, quantiles
from spec_exporter.types import DeriveParams, EngineGeneration, LatencyMetric, SpecCounters, Thresholds, Verdict, Window
from spec_exporter.vllm.parse import parse_exposition
from spec_exporter.window import SnapshotRing, window_delta
from tests.builders import KEY, engine, hist, snap
from tests.standin import NVIDIA_NO_SPEC, V032_IDLE, V032_LOAD, V085_V0, sample, with_engines

WINDOWS = (Window("1m", 60.0), Window("5m", 300.0))
PARAMS = DeriveParams(windows=WINDOWS, verdict_window="5m")


def test_acceptance_uses_vllms_formulas() -> None:
    a = acceptance(SpecCounters(drafts=49, draft_tokens=147, accepted_tokens=55, per_position=(35, 10, 10)))
    assert a.rate == 55 / 147
    assert a.mean_length == 1 + 55 / 49
    assert a.per_position == (35 / 49, 10 / 49, 10 / 49)
    assert (a.drafts, a.draft_tokens, a.accepted_tokens) == (49, 147, 55)


def test_an_idle_window_has_no_acceptance_rather_than_zero() -> None:
    a = acceptance(SpecCounters(0, 0, 0, (0, 0, 0)))
    assert a.rate is None and a.mean_length is None and a.per_position == (None, None, None)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.15),  # rank 20 in (0.1, 0.2]: 0.1 + 0.1 * 10/20
        (0.99, 0.2 + 0.2 * (9.6 / 10)),  # rank 39.6 in (0.2, 0.4]
        (0.1, 0.1 * (4 / 10)),  # first bucket interpolates from 0
        (0.0, 0.0),
        (-1, -math.inf),
        (2, math.inf),
    ],
)
def test_histogram_quantile_by_hand(q: float, expected: float) -> None:
    assert histogram_quantile(q, (0.1, 0.2, 0.4, math.inf), (10, 30, 40, 40)) == pytest.approx(expected, abs=1e-12)


def test_histogram_quantile_edge_cases_follow_promql() -> None:
    inf = math.inf
    # Rank in the +Inf bucket: the highest finite bound.
    assert histogram_quantile(0.99, (0.1, 0.2, inf), (1, 2, 100)) == 0.2
    # No +Inf bucket, or no observations: NaN.
    assert math.isnan(histogram_quantile(0.5, (0.1, 0.2), (1, 2)))
    assert math.isnan(histogram_quantile(0.5, (0.1, inf), (0, 0)))
    # A first bucket at or below zero returns its bound.
    assert histogram_quantile(0.1, (-1.0, 1.0, inf), (5, 10, 10)) == -1.0
    # Non-monotonic counts are forced monotonic; equal bounds merge.
    assert histogram_quantile(0.5, (0.1, 0.2, 0.4, inf), (10, 5, 20, 20)) == histogram_quantile(
        0.5, (0.1, 0.2, 0.4, inf), (10, 10, 20, 20)
    )


def test_quantiles_and_divergence_of_a_histogram() -> None:
    q = quantiles(hist((10, 30, 40, 40)))
    assert q[0.5] == pytest.approx(0.15) and q[0.99] == pytest.approx(0.392)
    assert divergence(q[0.5], q[0.99]) == pytest.approx(0.392 / 0.15)
    assert quantiles(hist((0, 0, 0, 0))) == {}
    assert divergence(0.0, 1.0) is None and divergence(None, 1.0) is None


def test_merge_sums_histograms_with_equal_bounds_only() -> None:
    merged = merge([hist((1, 2, 3, 4), total_sum=1.0), hist((1, 1, 1, 1), total_sum=0.5)])
    assert merged is not None and merged.counts == (2, 3, 4, 5) and merged.sum == 1.5
    assert merge([hist((1, 2, 3, 4)), hist((1, 1), bounds=(1.0, math.inf))]) is None
    assert merge([]) is None


@pytest.mark.parametrize(
    ("rate", "draft_tokens", "expected"),
    [
        (0.4999, 1000, Verdict.DISABLE),
        (0.5, 1000, Verdict.BREAK_EVEN),
        (0.6499, 1000, Verdict.BREAK_EVEN),
        (0.65, 1000, Verdict.BENEFICIAL),
        (0.9, 99, Verdict.INSUFFICIENT_DATA),
        (0.9, 100, Verdict.BENEFICIAL),
        (None, 1000, Verdict.INSUFFICIENT_DATA),
        (math.nan, None, Verdict.INSUFFICIENT_DATA),
    ],
)
def test_verdict_thresholds(rate: float | None, draft_tokens: float | None, expected: Verdict) -> None:
    assert verdict(rate, draft_tokens, Thresholds()) is expected


def verdict(rate: float | None, draft_tokens: float | None, thresholds: Thresholds) -> Verdict:
    # Without evidence at the load (no step cost), the one rule is the acceptance policy.
    return cost_verdict(rate, draft_tokens, None, None, thresholds)


def test_verdict_thresholds_are_configurable() -> None:
    strict = Thresholds(disable_below=0.6, beneficial_at=0.8, min_draft_tokens=10)
    assert verdict(0.55, 10, strict) is Verdict.DISABLE
    assert verdict(0.75, 10, strict) is Verdict.BREAK_EVEN
    assert verdict(0.8, 10, strict) is Verdict.BENEFICIAL


def _health(*texts_at: tuple[str, float], params: DeriveParams = PARAMS):  # type: ignore[no-untyped-def]
    ring = SnapshotRing(400)
    point = None
    for text, t in texts_at:
        point = ring.push(parse_exposition(text, t))
    deltas = {w.label: window_delta(ring.points, w.seconds, 2.5) for w in params.windows}
    return derive_target(point, deltas, params)


def test_real_v032_pair_gives_hand_checked_numbers() -> None:
    params = DeriveParams(windows=WINDOWS, verdict_window="5m", draft_cost_ratio=0.1)
    h = _health((sample(V032_IDLE), 0.0), (sample(V032_LOAD), 60.0), params=params)
    e = h.engines[("tiny", "0")]
    assert e.spec_enabled and e.num_speculative_tokens == 3
    one_minute = e.windows[0]
    assert one_minute.span_seconds == 60.0
    assert one_minute.acceptance.rate == 55 / 147
    assert one_minute.acceptance.mean_length == 1 + 55 / 49
    assert one_minute.generation_tokens_per_second == (106 - 0) / 60
    # TTFT buckets after load: 1 ≤ 0.02, 3 ≤ 0.04, 4 ≤ 0.06 of 4; p50 = rank 2 in (0.02, 0.04] = 0.03.
    assert one_minute.latency[LatencyMetric.TTFT][0.5] == pytest.approx(0.03)
    # 147 draft tokens ≥ 100 and 0.374 < 0.5.
    assert e.verdict is Verdict.DISABLE and h.combined_verdict is Verdict.DISABLE
    # The measured acceptance length over the prior rho = 1 + k_eff·c = 1.3; break-even in vLLM's units is c itself
    # (AL = 1 + k·r, so AL = rho at r = c), not the i.i.d. α of 0.233 the exporter printed before.
    assert one_minute.cost.source.value == "prior" and one_minute.cost.rho == pytest.approx(1.3)
    assert one_minute.expected_speedup == pytest.approx((1 + 55 / 49) / 1.3)
    assert one_minute.break_even_rate == pytest.approx(0.1)
    # A modelled 1.63x beside `disable`: the prior carries no load evidence, so the acceptance policy decides.
    assert one_minute.expected_speedup > 1 and one_minute.verdict is Verdict.DISABLE
    # 147 draft tokens in 49 drafts; the real capture's 49 ITL observations are the 49 decode steps, all drafted.
    assert one_minute.effective_k == 3.0 and one_minute.speculated_share == 1.0
    # Positions accepted 35, 10, 10 of 49: each one still adds more than its draft costs at c = 0.1.
    assert one_minute.recommended.k == 3 and one_minute.recommended.at_configured_k
    assert one_minute.recommended.speedup == pytest.approx((1 + 55 / 49) / 1.3)


def test_a_single_poll_is_insufficient_data_with_empty_windows() -> None:
    h = _health((sample(V032_LOAD), 0.0))
    e = h.engines[("tiny", "0")]
    assert e.verdict is Verdict.INSUFFICIENT_DATA
    assert all(w.acceptance is None and w.latency == {} for w in e.windows)


def test_a_target_without_spec_decoding_says_so() -> None:
    h = _health((sample(NVIDIA_NO_SPEC), 0.0), (sample(NVIDIA_NO_SPEC), 60.0))
    (e,) = h.engines.values()
    assert not e.spec_enabled
    assert all(w.acceptance is None for w in e.windows)
    assert e.num_speculative_tokens is None and all(w.break_even_rate is None for w in e.windows)


def test_v0_takes_its_verdict_from_the_lifetime_gauge() -> None:
    h = _health((sample(V085_V0), 0.0), (sample(V085_V0), 60.0))
    assert h.generation is EngineGeneration.V0
    (e,) = h.engines.values()
    assert e.spec_enabled and e.lifetime_acceptance == pytest.approx(0.49583333333333335)
    assert all(w.acceptance is None for w in e.windows)  # its counters are never differentiated
    assert e.verdict is Verdict.DISABLE and h.combined_verdict is Verdict.DISABLE


def test_data_parallel_engines_are_judged_apart_and_summed_for_the_target() -> None:
    h = _health((with_engines(sample(V032_IDLE), 3), 0.0), (with_engines(sample(V032_LOAD), 3), 60.0))
    assert len(h.engines) == 3
    for rank in range(3):
        a = h.engines[("tiny", str(rank))].windows[0].acceptance
        assert a.draft_tokens == 147 * (rank + 1) and a.rate == pytest.approx(55 / 147)
    combined = h.combined[0].acceptance
    assert combined.draft_tokens == 147 * 6 and combined.accepted_tokens == 55 * 6
    assert combined.per_position == pytest.approx((35 / 49, 10 / 49, 10 / 49))


def test_configured_k_overrides_the_position_count() -> None:
    params = DeriveParams(windows=WINDOWS, verdict_window="5m", num_speculative_tokens=5, draft_cost_ratio=0.0)
    h = _health((sample(V032_IDLE), 0.0), (sample(V032_LOAD), 60.0), params=params)
    e = h.engines[("tiny", "0")]
    assert e.num_speculative_tokens == 5
    # k_eff (3 drafted per draft) prices the drafts, not the configured 5: c = 0 breaks even at any rate.
    assert e.windows[0].cost.k == 3.0 and e.windows[0].break_even_rate == 0.0


def test_baseline_comparison_divides_tpot_p50_and_p99() -> None:
    def target(tpot_counts):  # type: ignore[no-untyped-def]
        ring = SnapshotRing(400)
        ring.push(snap(0, (KEY, engine(histograms={LatencyMetric.TPOT: hist((0, 0, 0, 0))}))))
        point = ring.push(snap(60, (KEY, engine(histograms={LatencyMetric.TPOT: hist(tpot_counts)}))))
        return derive_target(point, {w.label: window_delta(ring.points, w.seconds, 2.5) for w in WINDOWS}, PARAMS)

    spec = target((10, 30, 40, 40))  # p50 0.15, p99 0.392
    base = target((0, 20, 40, 40))  # p50 0.2 (rank 20 at the top of (0.1, 0.2])
    (one_minute, _) = compare("spec", spec, "base", base)
    assert one_minute.window == "1m"
    assert one_minute.tpot_speedup == pytest.approx(0.2 / 0.15)
    assert one_minute.p99_ratio[LatencyMetric.TPOT] == pytest.approx(0.392 / 0.396)  # base: 0.2 + 0.2 * 19.6/20


def test_quantile_zero_on_an_empty_first_bucket_is_nan_as_in_promql() -> None:
    # vLLM's TTFT histograms nearly always have an empty 0.001 bucket; Go's 0/0 is NaN.
    assert math.isnan(histogram_quantile(0.0, (1e-05, math.inf), (0, 10)))


def test_a_calibration_profile_prices_the_step_at_the_live_load_and_the_speedup_decides() -> None:
    from spec_exporter.types import PROFILE_KIND, CostPoint, CostProfile

    profile = CostProfile(
        kind=PROFILE_KIND,
        version=1,
        model="tiny",
        num_speculative_tokens=3,
        points=(CostPoint(batch_size=1, step_cost_ratio=1.2), CostPoint(batch_size=4, step_cost_ratio=2.4)),
    )
    params = DeriveParams(windows=WINDOWS, verdict_window="1m", draft_cost_ratio=0.1, cost_profile=profile)
    ring = SnapshotRing(400)
    ring.push(parse_exposition(sample(V032_IDLE), 0.0))
    point = ring.push(parse_exposition(sample(V032_LOAD), 60.0))
    deltas = {w.label: window_delta(ring.points, w.seconds, 2.5) for w in WINDOWS}
    h = derive_target(point, deltas, params, ring.points, 2.5)
    w = h.combined[0]
    # The pair ran one request at a time (load 1.0): rho(1) = 1.2 from the profile, exactly AL / 1.2.
    assert w.cost.source.value == "calibration" and w.cost.load == 1.0 and w.cost.rho == pytest.approx(1.2)
    assert w.expected_speedup == pytest.approx((1 + 55 / 49) / 1.2)
    assert w.break_even_rate == pytest.approx(0.2 / 3)
    # Load evidence: the 1.77x decides (beneficial), where acceptance 0.374 alone says disable.
    assert w.verdict is Verdict.BENEFICIAL and h.combined_verdict is Verdict.BENEFICIAL
    # Without the ring there is no load to read the profile at: the prior, and the acceptance policy, say so.
    alone = derive_target(point, deltas, params).combined[0]
    assert alone.cost.source.value == "prior" and "no load measured" in alone.cost.note
    assert alone.verdict is Verdict.DISABLE


def test_a_baseline_at_the_load_band_re_costs_the_target_and_each_engine() -> None:
    from spec_exporter.derive.baseline import Comparison, with_baseline
    from spec_exporter.derive.load import LoadBandComparison

    params = DeriveParams(windows=WINDOWS, verdict_window="1m", draft_cost_ratio=0.1)
    ring = SnapshotRing(400)
    ring.push(parse_exposition(with_engines(sample(V032_IDLE), 2), 0.0))
    point = ring.push(parse_exposition(with_engines(sample(V032_LOAD), 2), 60.0))
    deltas = {w.label: window_delta(ring.points, w.seconds, 2.5) for w in WINDOWS}
    h = derive_target(point, deltas, params, ring.points, 2.5)
    assert h.load[0].target.band == "1" and h.combined[0].cost.source.value == "prior"
    # The baseline's TPOT p50 is half the target's at band 1, over the 1m window only.
    slower = Comparison("t", "b", "1m", 0.5, {}, (LoadBandComparison("1", 0.02, 0.01, 5.0),))
    recosted = with_baseline(h, [slower], params)
    (one_minute, five_minutes) = recosted.combined
    assert one_minute.cost.source.value == "baseline" and one_minute.expected_speedup == pytest.approx(0.5)
    assert one_minute.cost.rho == pytest.approx((1 + 55 / 49) / 0.5)
    assert five_minutes.cost.source.value == "prior"
    # Acceptance 0.374 was `disable` by policy already; now the measured 0.5x at this load says it.
    assert recosted.combined_verdict is Verdict.DISABLE
    for e in recosted.engines.values():
        assert e.windows[0].cost.source.value == "baseline" and e.windows[0].expected_speedup == pytest.approx(0.5)
    # A faster baseline comparison flips the verdict the other way: 1.2x at the band beats acceptance 0.374.
    faster = Comparison("t", "b", "1m", 1.2, {}, (LoadBandComparison("1", 0.01, 0.012, 5.0),))
    assert with_baseline(h, [faster], params).combined_verdict is Verdict.BENEFICIAL
