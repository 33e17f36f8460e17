"""Acceptance over a window from spec-decode counter deltas (vLLM's own formulas, SpecDecodingProm docstring)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from spec_exporter.types import SpecCounters


@dataclass(frozen=True, slots=True)
class Acceptance:
    """Both halves of every ratio, and the ratios where their denominator is non-zero."""

    drafts: float
    draft_tokens: float
    accepted_tokens: float
    accepted_per_position: tuple[float, ...]
    rate: float | None
    mean_length: float | None
    per_position: tuple[float | None, ...]


def _ratio(numerator: float, denominator: float) -> float | None:
    # An idle window (no drafts) carries no signal: no value, not 0 and not NaN.
    return numerator / denominator if denominator > 0 else None


def acceptance(delta: SpecCounters) -> Acceptance:
    """rate = Δaccepted/Δdraft_tokens; mean length = 1 + Δaccepted/Δdrafts; per position = Δper_pos/Δdrafts."""
    per_draft = _ratio(delta.accepted_tokens, delta.drafts)
    return Acceptance(
        drafts=delta.drafts,
        draft_tokens=delta.draft_tokens,
        accepted_tokens=delta.accepted_tokens,
        accepted_per_position=delta.per_position,
        rate=_ratio(delta.accepted_tokens, delta.draft_tokens),
        mean_length=None if per_draft is None else 1.0 + per_draft,
        per_position=tuple(_ratio(v, delta.drafts) for v in delta.per_position),
    )


def sum_spec(specs: Sequence[SpecCounters]) -> SpecCounters | None:
    """Several engines' counters as one (positions aligned from 0); None when there are none."""
    if not specs:
        return None
    width = max(len(s.per_position) for s in specs)
    return SpecCounters(
        drafts=math.fsum(s.drafts for s in specs),
        draft_tokens=math.fsum(s.draft_tokens for s in specs),
        accepted_tokens=math.fsum(s.accepted_tokens for s in specs),
        per_position=tuple(
            math.fsum(s.per_position[i] for s in specs if i < len(s.per_position)) for i in range(width)
        ),
    )
