"""What a verdict means for the person reading it; the rule that picks it is in derive/cost.py."""

from __future__ import annotations

from spec_exporter.types import Verdict

# Worst first: when several engines or bands disagree, the worst one is the answer.
SEVERITY: tuple[Verdict, ...] = (Verdict.DISABLE, Verdict.BREAK_EVEN, Verdict.BENEFICIAL, Verdict.INSUFFICIENT_DATA)

ADVICE: dict[Verdict, str] = {
    Verdict.DISABLE: (
        "Speculative decoding is most likely slowing this traffic down (the rule above says by which number). "
        "Turn it off for this traffic, or route high-temperature requests to a pool without it; if you keep it, "
        "try a draft model closer to the target, fewer speculative tokens, or a batch-size schedule that turns it "
        "off at high load."
    ),
    Verdict.BREAK_EVEN: (
        "Speculative decoding is near break-even: the gain is marginal and the tail may be paying for it. Compare "
        "P99 TPOT/ITL against a pool without speculative decoding before deciding, and check acceptance by "
        "temperature: a low-acceptance slice can hide behind a healthy average."
    ),
    Verdict.BENEFICIAL: (
        "Speculative decoding pays here. Keep it on; watch P99 against the baseline, KV-cache usage and "
        "preemptions as load grows, since a saturated server turns speculation into a slowdown."
    ),
    Verdict.INSUFFICIENT_DATA: (
        "Too few draft tokens in the window to judge. Send traffic (or widen the window) and ask again; if "
        "speculative decoding is not enabled on this server there is nothing to judge."
    ),
}


def worst(verdicts: list[Verdict]) -> Verdict:
    return min(verdicts, key=SEVERITY.index) if verdicts else Verdict.INSUFFICIENT_DATA
