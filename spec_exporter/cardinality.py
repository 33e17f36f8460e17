"""The per-target cap on `model_name` values: names past the cap are folded into `other` (pure).

A vLLM serves one model, a few with LoRA adapters; a scrape with thousands of names would otherwise become
hundreds of thousands of exported series. Names keep their own label in the order they were first seen, so a
name that has one keeps it from poll to poll.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

from spec_exporter.derive.acceptance import sum_spec
from spec_exporter.derive.latency import merge_each
from spec_exporter.types import EngineKey, EngineSample, Snapshot

OTHER = "other"


def admit(admitted: tuple[str, ...], names: Iterable[str], cap: int) -> tuple[str, ...]:
    """`admitted` plus the new `names`, in first-seen order, up to `cap`."""
    out = list(admitted)
    known = set(out)
    for name in names:
        if len(out) >= cap:
            break
        if name not in known:
            out.append(name)
            known.add(name)
    return tuple(out)


def _sum(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) if present else None


def fold(samples: list[EngineSample]) -> EngineSample:
    """Several engines' samples as one: counters and request gauges add up, cache usage takes the fullest."""
    kv = [s.kv_cache_usage for s in samples if s.kv_cache_usage is not None]
    return EngineSample(
        spec=sum_spec([s.spec for s in samples if s.spec is not None]),
        lifetime_acceptance=None,
        histograms=merge_each(s.histograms for s in samples),
        generation_tokens=_sum(s.generation_tokens for s in samples),
        preemptions=_sum(s.preemptions for s in samples),
        requests_running=_sum(s.requests_running for s in samples),
        requests_waiting=_sum(s.requests_waiting for s in samples),
        kv_cache_usage=max(kv) if kv else None,
    )


def cap_models(snapshot: Snapshot, admitted: tuple[str, ...], cap: int) -> tuple[Snapshot, tuple[str, ...]]:
    """The snapshot with names past the cap folded into `other` per engine, and the names now admitted."""
    names = list(dict.fromkeys(model for model, _ in snapshot.engines))  # in scrape order
    if len(names) <= cap and all(n in admitted for n in names):
        return snapshot, admit(admitted, names, cap)
    admitted = admit(admitted, names, cap)
    keep = set(admitted)
    engines: dict[EngineKey, EngineSample] = {}
    folded: dict[str, list[EngineSample]] = {}
    for (model, engine), sample in snapshot.engines.items():
        if model in keep:
            engines[(model, engine)] = sample
        else:
            folded.setdefault(engine, []).append(sample)
    for engine, samples in folded.items():
        engines[(OTHER, engine)] = fold(samples)
    dropped = len({m for m, _ in snapshot.engines if m not in keep})
    return replace(snapshot, engines=engines, folded_models=dropped), admitted
