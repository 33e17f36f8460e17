"""Is speculative decoding paying off? The verdict thresholds and the speculative-sampling cost model."""

from __future__ import annotations

import math

from spec_exporter.types import Thresholds, Verdict

# Worst first: when several engines or bands disagree, the worst one is the answer.
SEVERITY: tuple[Verdict, ...] = (Verdict.DISABLE, Verdict.BREAK_EVEN, Verdict.BENEFICIAL, Verdict.INSUFFICIENT_DATA)

ADVICE: dict[Verdict, str] = {
    Verdict.DISABLE: (
        "Acceptance is below the net-negative threshold: speculative decoding is most likely slowing this "
        "traffic down. Turn it off for this traffic, or route high-temperature requests to a pool without it; "
        "if you keep it, try a draft model closer to the target or fewer speculative tokens."
    ),
    Verdict.BREAK_EVEN: (
        "Acceptance is near break-even: the gain is marginal and the tail may be paying for it. Compare P99 "
        "TPOT/ITL against a pool without speculative decoding before deciding, and check acceptance by "
        "temperature: a low-acceptance slice can hide behind a healthy average."
    ),
    Verdict.BENEFICIAL: (
        "Acceptance is high enough for a real gain. Keep it on; watch P99 against the baseline, KV-cache usage "
        "and preemptions as load grows, since a saturated server turns speculation into a slowdown."
    ),
    Verdict.INSUFFICIENT_DATA: (
        "Too few draft tokens in the window to judge. Send traffic (or widen the window) and ask again; if "
        "speculative decoding is not enabled on this server there is nothing to judge."
    ),
}


def verdict(acceptance_rate: float | None, draft_tokens: float | None, thresholds: Thresholds) -> Verdict:
    if acceptance_rate is None or math.isnan(acceptance_rate):
        return Verdict.INSUFFICIENT_DATA
    if draft_tokens is not None and draft_tokens < thresholds.min_draft_tokens:
        return Verdict.INSUFFICIENT_DATA
    if acceptance_rate < thresholds.disable_below:
        return Verdict.DISABLE
    if acceptance_rate < thresholds.beneficial_at:
        return Verdict.BREAK_EVEN
    return Verdict.BENEFICIAL


def worst(verdicts: list[Verdict]) -> Verdict:
    return min(verdicts, key=SEVERITY.index) if verdicts else Verdict.INSUFFICIENT_DATA


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """E = (1 − α^(k+1)) / (1 − α): tokens a target step yields with k drafts accepted i.i.d. at rate α."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, k: int, draft_cost_ratio: float) -> float:
    """Leviathan et al. 2023: E / (1 + k·c), c = cost of a draft step relative to a target step."""
    return expected_tokens_per_step(alpha, k) / (1.0 + k * draft_cost_ratio)


def break_even_acceptance(k: int, draft_cost_ratio: float) -> float | None:
    """The α at which the modelled speedup is exactly 1; None when no α ≤ 1 breaks even (c ≥ 1)."""
    if k < 1:
        return None
    target = 1.0 + k * draft_cost_ratio
    if target <= 1.0:
        return 0.0
    if target >= k + 1:
        return None
    lo, hi = 0.0, 1.0
    # E(α) rises monotonically from 1 to k+1 on [0, 1]; 60 halvings pin α to float precision.
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_tokens_per_step(mid, k) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
