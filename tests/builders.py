"""Hand-built snapshots for derivation tests: only the fields a test is about."""

from __future__ import annotations

import math

from spec_exporter.types import EngineGeneration, EngineSample, Histogram, LatencyMetric, Snapshot, SpecCounters

KEY = ("m", "0")
BOUNDS = (0.1, 0.2, 0.4, math.inf)


def hist(counts: tuple[float, ...], bounds: tuple[float, ...] = BOUNDS, total_sum: float = 0.0) -> Histogram:
    return Histogram(bounds=bounds, counts=counts, count=counts[-1], sum=total_sum)


def engine(
    drafts: float = 0.0,
    draft_tokens: float = 0.0,
    accepted: float = 0.0,
    per_position: tuple[float, ...] = (0.0, 0.0, 0.0),
    *,
    spec: bool = True,
    histograms: dict[LatencyMetric, Histogram] | None = None,
    generation_tokens: float = 0.0,
    preemptions: float = 0.0,
    lifetime_acceptance: float | None = None,
) -> EngineSample:
    return EngineSample(
        spec=SpecCounters(drafts, draft_tokens, accepted, per_position) if spec else None,
        lifetime_acceptance=lifetime_acceptance,
        histograms=histograms or {},
        generation_tokens=generation_tokens,
        preemptions=preemptions,
        requests_running=1.0,
        requests_waiting=0.0,
        kv_cache_usage=0.25,
    )


def snap(
    t: float, *engines: tuple[tuple[str, str], EngineSample], generation: EngineGeneration = EngineGeneration.V1
) -> Snapshot:
    return Snapshot(taken_at=t, generation=generation, engines=dict(engines))
