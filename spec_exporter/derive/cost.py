"""The one cost model: every modelled number (speedup, break-even, best k, the verdict's speedup) comes from here.

One quantity carries the cost: the step-cost ratio rho(B) = time of one speculative step / time of one plain step
at running batch B. It is a property of hardware, model pair and k, not of the traffic's acceptance. With vLLM's
own measurements over a window (all in vLLM's units, never the i.i.d. α of Leviathan et al.):

- effective k = Δdraft_tokens / Δdrafts (what was drafted, below the configured k under a batch-size schedule);
- acceptance length AL = 1 + Δaccepted / Δdrafts = 1 + k_eff · r, r = Δaccepted / Δdraft_tokens (vLLM's rate);
- speedup at that load = AL / rho(B), per speculating step: steps that did not speculate cost and yield what a
  plain step does, so they pull the whole traffic's speedup toward 1 without moving it across 1;
- break-even rate r* = (rho(B) − 1) / k_eff: the vLLM rate at which AL / rho(B) = 1;
- j drafts cost rho_j(B) = 1 + (j / k)·(rho_k(B) − 1): linear in j, exact for the prior and an approximation for a
  measured rho (which is measured at one k only).

Where rho comes from, strongest evidence first, and always said (`CostSource`):
`baseline` (a baseline pool at the same load band: rho = AL · TPOT_spec / TPOT_base, i.e. AL / measured speedup),
`calibration` (a profile written by `probe --write-profile`, interpolated at the live load; refused for another
model, and not used outside the load range it measured), `prior` (1 + k_eff · c, which ignores load).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

from spec_exporter.types import CostProfile, Thresholds, Verdict


class CostSource(StrEnum):
    """Where rho came from: the closed set of `source` label values."""

    BASELINE = "baseline"
    CALIBRATION = "calibration"
    PRIOR = "prior"


# Evidence at the load the server runs at: with it, the verdict follows the modelled or measured speedup.
LOAD_EVIDENCE: frozenset[CostSource] = frozenset({CostSource.BASELINE, CostSource.CALIBRATION})


@dataclass(frozen=True, slots=True)
class StepCost:
    """rho for `k` drafted tokens per draft (the effective k) at `load` running requests per engine.

    `note` says why this source and not a stronger one (empty when there is nothing to say).
    """

    rho: float
    source: CostSource
    k: float
    load: float | None = None
    note: str = ""

    @property
    def at_load(self) -> bool:
        return self.source in LOAD_EVIDENCE


def prior(k: float, draft_cost_ratio: float) -> StepCost:
    """rho = 1 + k·c: the draft's steps on top of a verify step that costs what a plain step does (small batch)."""
    return StepCost(1.0 + k * draft_cost_ratio, CostSource.PRIOR, k)


def rho_for(j: float, cost: StepCost) -> float:
    """rho_j: the cost of drafting j tokens per step, scaled linearly from the rho known for `cost.k`."""
    if cost.k <= 0:
        return 1.0
    return 1.0 + (j / cost.k) * (cost.rho - 1.0)


def speedup(acceptance_length: float, cost: StepCost) -> float:
    """AL / rho: tokens per speculative step over what the step costs in plain steps."""
    return acceptance_length / cost.rho


def break_even_rate(cost: StepCost) -> float | None:
    """r* = (rho − 1) / k_eff in vLLM's units (accepted / draft tokens); None when no rate ≤ 1 breaks even."""
    if cost.k <= 0:
        return None
    r = (cost.rho - 1.0) / cost.k
    return max(r, 0.0) if r <= 1.0 else None


def interpolate(profile: CostProfile, load: float) -> float | None:
    """rho at `load` running requests per engine, linear between the profile's batch sizes.

    None outside what the profile measured: a load that rounds to a batch size below its first or above its
    last point (a profile measured at 1, 2, 4 says nothing about batch 16).
    """
    points = sorted((p.batch_size, p.step_cost_ratio) for p in profile.points)
    first, last = points[0][0], points[-1][0]
    if load < first - 0.5 or load >= last + 0.5:
        return None
    x = min(max(load, first), last)
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][1]


def step_cost(
    *,
    k_eff: float,
    draft_cost_ratio: float,
    load: float | None = None,
    model: str | None = None,
    k: int | None = None,
    profile: CostProfile | None = None,
    baseline_speedup: float | None = None,
    acceptance_length: float | None = None,
) -> StepCost:
    """rho from the strongest evidence there is at `load`; the prior when there is none.

    `baseline_speedup`: the measured TPOT speedup against a baseline pool at the load band the target runs at
    now (None: no baseline, or it finished no requests at this band).
    """
    notes = []
    if baseline_speedup is not None and baseline_speedup > 0 and acceptance_length is not None:
        return StepCost(acceptance_length / baseline_speedup, CostSource.BASELINE, k_eff, load)
    if profile is not None:
        rho = None
        if model is not None and profile.model != model:
            notes.append(f"the calibration profile is for model {profile.model!r}, not {model!r}: not used")
        elif k is not None and profile.num_speculative_tokens != k:
            notes.append(
                f"the calibration profile was measured at k={profile.num_speculative_tokens}, this engine drafts "
                f"up to k={k}: not used"
            )
        elif load is None:
            notes.append("no load measured in the window: the calibration profile cannot be read")
        else:
            rho = interpolate(profile, load)
            if rho is None:
                sizes = sorted(p.batch_size for p in profile.points)
                notes.append(
                    f"the calibration profile covers batch {sizes[0]:g} to {sizes[-1]:g}, the load is {load:.1f}: "
                    "not used outside it"
                )
        if rho is not None:
            # The profile is measured at its k; a schedule drafting fewer pays for fewer drafts.
            measured = StepCost(rho, CostSource.CALIBRATION, float(profile.num_speculative_tokens), load)
            return StepCost(rho_for(k_eff, measured), CostSource.CALIBRATION, k_eff, load)
    out = prior(k_eff, draft_cost_ratio)
    return StepCost(out.rho, out.source, k_eff, load, "; ".join(notes))


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


def position_denominators(
    per_position: Sequence[float], drafts: float, draft_tokens: float
) -> tuple[tuple[float, float], ...]:
    """Per position i, the (fewest, most) drafts that had a token at i, given only vLLM's counters.

    vLLM counts position i over the drafts that had it but exports only Δdrafts. Every draft has position 0; the
    counts n_i never rise with i, sum to Δdraft_tokens and are at least the accepted count a_i. So
    n_i ≥ max(a_i, (T − i·D) / (k − i)) (the rest spread evenly) and n_i ≤ min(D, (T − Σ_{m>i} a_m) / (i + 1)).
    When every draft had all k tokens (T = k·D) both bounds are D: the plain per-draft rate is exact.
    """
    k = len(per_position)
    out = []
    for i, accepted in enumerate(per_position):
        if i == 0:
            out.append((drafts, drafts))
            continue
        low = max(accepted, (draft_tokens - i * drafts) / (k - i), 0.0)
        high = min(drafts, (draft_tokens - math.fsum(per_position[i + 1 :])) / (i + 1))
        out.append((min(low, high), max(high, 0.0)))
    return tuple(out)


def speedup_curve(
    per_position: Sequence[float], denominators: Sequence[float], cost: StepCost
) -> tuple[float, ...] | None:
    """speedup(j) = (1 + Σ_{i<j} a_i / n_i) / rho_j for j = 1..k: each position's rate over the drafts that had it."""
    if not per_position or any(n <= 0 for n in denominators):
        return None
    curve = []
    tokens = 1.0
    for j, (accepted, n) in enumerate(zip(per_position, denominators, strict=True), start=1):
        tokens += accepted / n
        curve.append(tokens / rho_for(j, cost))
    return tuple(curve)


def _best(curve: tuple[float, ...]) -> BestK:
    # First of equals: fewer drafts for the same modelled gain is cheaper in every way the model leaves out.
    j = max(range(len(curve)), key=lambda i: (curve[i], -i))
    if curve[j] <= 1.0:
        return BestK(0, 1.0, False, curve)
    return BestK(j + 1, curve[j], j + 1 == len(curve), curve)


def best_k(per_position: Sequence[float], drafts: float, draft_tokens: float, cost: StepCost) -> BestK | None:
    """The best j in 1..k; None without drafts, or when the per-position denominators are too uncertain to say.

    `cost` is for the configured k (rho_k); under a schedule the positions' denominators are bounded
    (`position_denominators`): the answer stands only when both bounds give the same j.
    """
    if drafts <= 0 or not per_position:
        return None
    bounds = position_denominators(per_position, drafts, draft_tokens)
    low = speedup_curve(per_position, [hi for _, hi in bounds], cost)
    high = speedup_curve(per_position, [lo for lo, _ in bounds], cost)
    if low is None or high is None:
        return None
    a, b = _best(low), _best(high)
    if a.k != b.k:
        return None
    return a


def verdict(
    acceptance_rate: float | None,
    draft_tokens: float | None,
    modelled_speedup: float | None,
    cost: StepCost | None,
    thresholds: Thresholds,
) -> Verdict:
    """The one verdict rule.

    With load evidence (`cost.source` baseline or calibration) the verdict follows the speedup at that load:
    below `speedup_disable_below` disable, below `speedup_beneficial_at` break_even. With only the prior it
    follows the acceptance policy on vLLM's rate (`disable_below` / `beneficial_at`), which ignores load.
    """
    if acceptance_rate is None or math.isnan(acceptance_rate):
        return Verdict.INSUFFICIENT_DATA
    if draft_tokens is not None and draft_tokens < thresholds.min_draft_tokens:
        return Verdict.INSUFFICIENT_DATA
    if cost is not None and cost.at_load and modelled_speedup is not None:
        value, disable, beneficial = (
            modelled_speedup,
            thresholds.speedup_disable_below,
            thresholds.speedup_beneficial_at,
        )
    else:
        value, disable, beneficial = acceptance_rate, thresholds.disable_below, thresholds.beneficial_at
    if value < disable:
        return Verdict.DISABLE
    if value < beneficial:
        return Verdict.BREAK_EVEN
    return Verdict.BENEFICIAL


def rule(cost: StepCost | None, thresholds: Thresholds) -> str:
    """The sentence that says which number decides the verdict and why: printed beside every verdict."""
    if cost is not None and cost.at_load:
        return (
            f"the verdict follows the speedup at the current load ({cost.source.value} evidence): below "
            f"{thresholds.speedup_disable_below:g}x disable, below {thresholds.speedup_beneficial_at:g}x break-even."
        )
    return (
        f"the verdict follows the acceptance policy on vLLM's rate (below {thresholds.disable_below:g} disable, "
        f"below {thresholds.beneficial_at:g} break-even) because there is no evidence at this load: the modelled "
        "speedup uses the prior step cost 1 + k*c, which ignores load, so it does not decide. For evidence, add a "
        "baseline pool (--baseline-target) or a calibration profile (`spec-exporter probe --baseline-target URL "
        "--concurrency 1,2,4 --write-profile FILE`, then speculation.cost_profile: FILE)."
    )
