"""Reading vLLM's answer: the per-request speculative-decoding numbers of a completion (pure)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from spec_exporter.tap.request import NotUnderstood


@dataclass(frozen=True, slots=True)
class SpecResult:
    """One response's per-request numbers; `accepted`/`drafted` are None when vLLM sent no spec metrics."""

    model: str | None
    accepted: int | None
    drafted: int | None
    ttft_seconds: float | None
    tpot_seconds: float | None
    completion_tokens: int | None
    # Verification steps (num_spec_steps): the denominator of the request's mean acceptance length.
    steps: int | None = None
    # Steps whose draft token at position i was accepted, i = 0..k-1, from vLLM's acceptance_histogram.
    per_position: tuple[int, ...] | None = None
    # A choice ended on a stop string: vLLM finds those after its engine finished its part, so the engine never
    # reported the request's speculative numbers.
    stopped_on_string: bool = False


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def spec_result(obj: Any) -> SpecResult:
    """Per-request numbers from a completion response or the final usage chunk of a stream."""
    if not isinstance(obj, dict):
        raise NotUnderstood("response is not a JSON object")
    model = obj.get("model") if isinstance(obj.get("model"), str) else None
    usage = obj.get("usage")
    completion_tokens = _number(usage.get("completion_tokens")) if isinstance(usage, dict) else None
    metrics = obj.get("metrics")
    accepted = drafted = steps = None
    per_position = None
    ttft = tpot = None
    if isinstance(metrics, dict):
        spec = metrics.get("speculative_decoding")
        if isinstance(spec, dict):
            a, d = _number(spec.get("num_accepted_draft_tokens")), _number(spec.get("num_draft_tokens"))
            if a is not None and d is not None and a <= d and a == int(a) and d == int(d):
                accepted, drafted = int(a), int(d)
            n = _number(spec.get("num_spec_steps"))
            steps = int(n) if n is not None and n == int(n) else None
            per_position = _per_position(spec.get("acceptance_histogram"), steps, accepted)
        # vLLM's per-request TTFT starts at scheduling; its Prometheus TTFT starts at arrival. Adding the
        # queue time brings the two onto the same footing.
        ttft_ms = _number(metrics.get("time_to_first_token_ms"))
        ttft = (ttft_ms + (_number(metrics.get("queue_time_ms")) or 0.0)) / 1000 if ttft_ms is not None else None
        tpot = _tpot_from_metrics(metrics, completion_tokens)
    choices = obj.get("choices")
    stopped = isinstance(choices, list) and any(
        isinstance(c, dict) and isinstance(c.get("stop_reason"), str) for c in choices
    )
    return SpecResult(
        model=model,
        accepted=accepted,
        drafted=drafted,
        ttft_seconds=ttft,
        tpot_seconds=tpot,
        completion_tokens=int(completion_tokens) if completion_tokens is not None else None,
        steps=steps,
        per_position=per_position,
        stopped_on_string=stopped,
    )


def _per_position(histogram: Any, steps: int | None, accepted: int | None) -> tuple[int, ...] | None:
    """Per position i, the steps that accepted their i-th draft token: those that accepted more than i tokens.

    vLLM's `acceptance_histogram[n]` counts the request's steps that accepted exactly n draft tokens (n = 0..k;
    the fixture README and the samples check it: Σ h = num_spec_steps, Σ n·h = num_accepted_draft_tokens). A
    token at position i is accepted only when all before it were, so it counts Σ_{n>i} h[n]: the same counting
    as vLLM's per-position counter. Anything inconsistent is dropped rather than half-read.
    """
    if not isinstance(histogram, list) or len(histogram) < 2 or steps is None or accepted is None:
        return None
    counts = []
    for v in histogram:
        n = _number(v)
        if n is None or n != int(n):
            return None
        counts.append(int(n))
    if sum(counts) != steps or sum(i * c for i, c in enumerate(counts)) != accepted:
        return None
    return tuple(sum(counts[i + 1 :]) for i in range(len(counts) - 1))


def _tpot_from_metrics(metrics: dict[str, Any], completion_tokens: float | None) -> float | None:
    # vLLM's TPOT is decode time / (generated tokens - 1), decode time running from the first token to the last:
    # exactly its per-request mean_itl_ms (vllm/entrypoints/generate/base/serving.py, 0.33).
    itl_ms = _number(metrics.get("mean_itl_ms"))
    if itl_ms is not None:
        return itl_ms / 1000
    generation_ms = _number(metrics.get("generation_time_ms"))
    if generation_ms is None or completion_tokens is None or completion_tokens < 2:
        return None
    return generation_ms / 1000 / (completion_tokens - 1)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise NotUnderstood(f"response body is not JSON: {type(e).__name__}") from None
