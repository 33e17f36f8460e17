"""The one cost model, by hand: units, effective k, per-position denominators, rho interpolation, each verdict path."""

from __future__ import annotations

import json

import pytest

from spec_exporter.derive.cost import (
    CostSource,
    StepCost,
    best_k,
    break_even_rate,
    interpolate,
    position_denominators,
    prior,
    rho_for,
    rule,
    speedup,
    speedup_curve,
    step_cost,
    verdict,
)
from spec_exporter.types import PROFILE_KIND, CostPoint, CostProfile, Thresholds, Verdict

PROFILE = CostProfile(
    kind=PROFILE_KIND,
    version=1,
    model="m",
    num_speculative_tokens=3,
    points=(CostPoint(batch_size=1, step_cost_ratio=1.2), CostPoint(batch_size=2, step_cost_ratio=1.4),
            CostPoint(batch_size=4, step_cost_ratio=2.0)),
)  # fmt: skip


def test_break_even_is_in_vllms_units_not_the_iid_alpha() -> None:
    # k = 3, c = 0.1: rho = 1.3. vLLM's rate r gives AL = 1 + k·r, so AL = rho at r = 0.1 (the i.i.d. α would be 0.233).
    cost = prior(3, 0.1)
    assert cost.rho == pytest.approx(1.3) and cost.source is CostSource.PRIOR
    r = break_even_rate(cost)
    assert r == pytest.approx(0.1)
    assert speedup(1 + 3 * r, cost) == pytest.approx(1.0)
    # The real v0.32 pair: 55 of 147 accepted in 49 drafts.
    assert speedup(1 + 55 / 49, cost) == pytest.approx((1 + 55 / 49) / 1.3)
    # A draft as costly as the target never breaks even at any rate ≤ 1.
    assert break_even_rate(prior(3, 1.5)) is None


def test_effective_k_prices_the_drafts_under_a_mixed_schedule() -> None:
    # 100 drafts of 250 tokens: a schedule drafting 3 at low batch and 2 at high. k_eff = 2.5 prices the drafts.
    cost = step_cost(k_eff=2.5, draft_cost_ratio=0.1)
    assert cost.rho == pytest.approx(1.25) and break_even_rate(cost) == pytest.approx(0.1)
    # A profile measured at k = 3 (rho_3 = 2.0 at batch 4) pays for 2.5 drafts: 1 + 2.5/3 · 1.0.
    calibrated = step_cost(k_eff=2.5, draft_cost_ratio=0.1, load=4.0, model="m", k=3, profile=PROFILE)
    assert calibrated.source is CostSource.CALIBRATION
    assert calibrated.rho == pytest.approx(1 + 2.5 / 3)
    assert break_even_rate(calibrated) == pytest.approx((2.5 / 3) / 2.5)
    # rho_j scales linearly in j from the rho known at its k.
    assert rho_for(1, calibrated) == pytest.approx(1 + 1 / 3)


def test_per_position_denominators_are_exact_when_every_draft_had_k_tokens() -> None:
    assert position_denominators((80, 60, 20), 100, 300) == ((100, 100), (100, 100), (100, 100))


def test_per_position_denominators_are_bounded_under_a_schedule() -> None:
    # Truly 50 drafts of 3 and 50 of 2 (n = 100, 100, 50); the counters only say D = 100, T = 250.
    # n_1 ≥ max(60, (250 − 100) / 2) = 75, n_1 ≤ min(100, (250 − 20) / 2); n_2 ≥ max(20, 250 − 200) = 50,
    # n_2 ≤ min(100, 250 / 3).
    bounds = position_denominators((80, 60, 20), 100, 250)
    assert bounds[0] == (100, 100)
    assert bounds[1] == pytest.approx((75, 100))
    assert bounds[2] == pytest.approx((50, 250 / 3))
    for (low, high), truth in zip(bounds, (100, 100, 50), strict=True):
        assert low <= truth <= high


def test_best_k_divides_each_position_by_the_drafts_that_had_it() -> None:
    cost = prior(3, 0.1)
    # All drafts had 3 tokens: the plain per-draft rates. Positions 3 adds 0.05 for a 0.1 draft cost: k = 2.
    best = best_k((80, 60, 5), 100, 300, cost)
    assert best.curve == pytest.approx((1.8 / 1.1, 2.4 / 1.2, 2.45 / 1.3))
    assert best.k == 2 and not best.at_configured_k
    # Under a schedule the third position's rate is between 20/83.3 and 20/50: both bounds favour k = 3 here.
    best = best_k((80, 70, 20), 100, 250, cost)
    assert best is not None and best.k == 3 and best.at_configured_k
    # Where the bounds disagree (position 3 worth 0.06 or 0.10 against a 0.1 draft), no answer rather than a
    # biased one: the diluted 5/100 would have said k = 2.
    assert best_k((80, 60, 5), 100, 205, prior(3, 0.08)) is None
    assert speedup_curve((80,), (0,), cost) is None
    assert best_k((0, 0, 0), 0, 0, cost) is None


def test_best_k_is_zero_when_no_k_pays() -> None:
    best = best_k((20, 5, 1), 100, 300, prior(3, 0.5))
    assert all(s < 1 for s in best.curve)
    assert best.k == 0 and best.speedup == 1.0


@pytest.mark.parametrize(
    ("load", "rho"),
    [(1.0, 1.2), (1.5, 1.3), (3.0, 1.7), (4.0, 2.0), (0.6, 1.2), (4.4, 2.0), (0.4, None), (4.5, None), (16, None)],
)
def test_rho_is_interpolated_at_the_live_load_and_never_extrapolated(load: float, rho: float | None) -> None:
    got = interpolate(PROFILE, load)
    assert got == (pytest.approx(rho) if rho is not None else None)


def test_the_strongest_evidence_wins_and_every_refusal_is_said() -> None:
    base = step_cost(k_eff=3, draft_cost_ratio=0.1, load=3.0, model="m", k=3, profile=PROFILE,
                     baseline_speedup=1.25, acceptance_length=2.5)  # fmt: skip
    # rho = AL · TPOT_spec / TPOT_base = AL / measured speedup; the modelled speedup then is the measured one.
    assert base.source is CostSource.BASELINE and base.rho == pytest.approx(2.0)
    assert speedup(2.5, base) == pytest.approx(1.25)
    cal = step_cost(k_eff=3, draft_cost_ratio=0.1, load=3.0, model="m", k=3, profile=PROFILE)
    assert cal.source is CostSource.CALIBRATION and cal.rho == pytest.approx(1.7) and cal.at_load
    other_model = step_cost(k_eff=3, draft_cost_ratio=0.1, load=3.0, model="x", k=3, profile=PROFILE)
    assert other_model.source is CostSource.PRIOR and "for model 'm', not 'x'" in other_model.note
    other_k = step_cost(k_eff=4, draft_cost_ratio=0.1, load=3.0, model="m", k=4, profile=PROFILE)
    assert other_k.source is CostSource.PRIOR and "measured at k=3" in other_k.note
    outside = step_cost(k_eff=3, draft_cost_ratio=0.1, load=9.0, model="m", k=3, profile=PROFILE)
    assert outside.source is CostSource.PRIOR and "covers batch 1 to 4" in outside.note
    assert not outside.at_load


def _cost(source: CostSource) -> StepCost:
    return StepCost(1.3, source, 3.0, 2.0)


@pytest.mark.parametrize(
    ("rate", "modelled", "source", "expected"),
    [
        # Load evidence: the speedup decides, whatever the rate.
        (0.8, 0.95, CostSource.CALIBRATION, Verdict.DISABLE),
        (0.3, 1.05, CostSource.BASELINE, Verdict.BREAK_EVEN),
        (0.3, 1.1, CostSource.CALIBRATION, Verdict.BENEFICIAL),
        # Only the prior: the acceptance policy decides, whatever the modelled speedup (the v0.32 pair's 1.63x).
        (0.374, 1.63, CostSource.PRIOR, Verdict.DISABLE),
        (0.6, 0.9, CostSource.PRIOR, Verdict.BREAK_EVEN),
        (0.7, 0.9, CostSource.PRIOR, Verdict.BENEFICIAL),
    ],
)
def test_one_verdict_rule(rate: float, modelled: float, source: CostSource, expected: Verdict) -> None:
    assert verdict(rate, 1000, modelled, _cost(source), Thresholds()) is expected


def test_the_rule_sentence_names_what_decides() -> None:
    t = Thresholds(speedup_disable_below=0.95, speedup_beneficial_at=1.2)
    assert verdict(0.9, 1000, 0.97, _cost(CostSource.CALIBRATION), t) is Verdict.BREAK_EVEN
    assert verdict(0.9, 99, 2.0, _cost(CostSource.CALIBRATION), t) is Verdict.INSUFFICIENT_DATA
    assert "speedup at the current load (calibration evidence)" in rule(_cost(CostSource.CALIBRATION), t)
    prior_rule = rule(_cost(CostSource.PRIOR), t)
    assert "acceptance policy" in prior_rule and "ignores load" in prior_rule and "--write-profile" in prior_rule


# --- per temperature band: steps and per-position acceptance from vLLM's per-request acceptance_histogram ----------


def test_the_acceptance_histogram_gives_per_position_counts() -> None:
    import json

    from spec_exporter.tap.response import spec_result
    from tests.vllm_answers import fixture

    # acceptance_histogram [6, 5, 0, 0] over 11 steps: 5 steps accepted exactly one token, none more.
    r = spec_result(json.loads(fixture("completion_default_temp.json")))
    assert (r.steps, r.accepted, r.drafted, r.per_position) == (11, 5, 33, (5, 0, 0))
    # [18, 7, 0, 0] over 25 steps, 7 accepted.
    r = spec_result(json.loads(fixture("chat_nonstream_t0.7.json")))
    assert (r.steps, r.per_position) == (25, (7, 0, 0))
    body = json.loads(fixture("chat_nonstream_t0.7.json"))
    spec = body["metrics"]["speculative_decoding"]
    # A step accepting 3 counts at positions 0, 1 and 2 (each needs all earlier ones).
    spec |= {"acceptance_histogram": [20, 2, 1, 2], "num_accepted_draft_tokens": 10}
    assert spec_result(body).per_position == (5, 3, 2)
    # Inconsistent with the request's own totals: dropped, not half-read.
    spec |= {"acceptance_histogram": [20, 2, 1, 1]}
    assert spec_result(body).per_position is None
    spec |= {"acceptance_histogram": "nope", "num_accepted_draft_tokens": 10}
    assert spec_result(body).per_position is None


def test_the_exchange_counts_a_requests_steps_and_positions_in_its_band() -> None:
    from prometheus_client import CollectorRegistry

    from spec_exporter.tap.metrics import TapMetrics
    from tests.unit.test_join import CHAT, run
    from tests.unit.test_join_metrics import samples

    registry = CollectorRegistry()
    body = json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": True}}).encode()
    run(body, metrics=TapMetrics(registry))
    got = {(k[0], dict(k[1]).get("position")): v for k, v in samples(registry).items() if k[0].startswith("spec_tap_")}
    # chat_stream_usage_t0.4.sse: 16 steps, acceptance_histogram [9, 7, 0, 0].
    assert got[("spec_tap_spec_steps_total", None)] == 16
    positions = {p: v for (n, p), v in got.items() if n == "spec_tap_accepted_tokens_per_pos_total"}
    assert positions == {"0": 7, "1": 0, "2": 0}
