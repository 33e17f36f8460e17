"""Plain data read from one vLLM /metrics scrape: what the parser produces and the window consumes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class LatencyMetric(StrEnum):
    """The latency families we derive quantiles for; values are the `metric` label we export."""

    TTFT = "ttft"
    ITL = "itl"
    TPOT = "tpot"
    E2E = "e2e"


class EngineGeneration(StrEnum):
    """V1 exposes windowable spec-decode counters; V0 only a lifetime gauge (its counters are broken)."""

    V1 = "v1"
    V0 = "v0"


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative Prometheus histogram: `bounds` ascending and ending in +Inf, `counts` cumulative."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    count: float
    sum: float

    @property
    def total(self) -> float:
        return self.counts[-1] if self.counts else 0.0


@dataclass(frozen=True, slots=True)
class SpecCounters:
    """vLLM's four V1 spec-decode counters for one engine (positions indexed 0..k-1)."""

    drafts: float
    draft_tokens: float
    accepted_tokens: float
    per_position: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineSample:
    """Everything we read for one (model_name, engine) from one scrape."""

    spec: SpecCounters | None = None
    lifetime_acceptance: float | None = None
    histograms: Mapping[LatencyMetric, Histogram] = field(default_factory=dict)
    generation_tokens: float | None = None
    preemptions: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None


EngineKey = tuple[str, str]
"""(model_name, engine); engine is "" on V0, which has no engine label."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One parsed scrape of one target, stamped with the (monotonic) time it was taken."""

    taken_at: float
    generation: EngineGeneration
    engines: Mapping[EngineKey, EngineSample]
