"""The types every stage shares, each defined once: what a scrape holds, windows, thresholds, verdicts, errors.

Config builds them, the poller and the tap fill them, derivations read them, the collector renders them.
Nothing here does I/O or imports another module of the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class PollError(StrEnum):
    """Why a poll failed: the closed set of `reason` label values."""

    TIMEOUT = "timeout"
    CONNECTION = "connection_error"
    HTTP_STATUS = "http_status"
    BODY_TOO_LARGE = "body_too_large"
    TRUNCATED = "truncated"
    PARSE_ERROR = "parse_error"
    UNKNOWN_LAYOUT = "unknown_layout"
    # A production-stack router (or another proxy) answers with router gauges only: not an engine to poll.
    NOT_AN_ENGINE = "not_an_engine"
    # The same series twice in one scrape: summing them would silently halve or double a ratio.
    DUPLICATE_SERIES = "duplicate_series"
    # process_start_time_seconds changed with no counter going down: the URL reaches several vLLM processes
    # (a Service in front of a pool), whose counters cannot be differenced.
    MULTIPLE_PROCESSES = "multiple_processes"
    # The TLS handshake with an https target failed: its certificate does not verify against tls_config. A target
    # that refuses the exporter's client certificate closes the connection after a TLS 1.3 handshake instead:
    # connection_error.
    TLS = "tls_error"


class Verdict(StrEnum):
    DISABLE = "disable"
    BREAK_EVEN = "break_even"
    BENEFICIAL = "beneficial"
    INSUFFICIENT_DATA = "insufficient_data"


class Thresholds(BaseModel):
    """The verdict's lines; too few draft tokens: no verdict.

    With evidence at the current load (a baseline or a calibration profile) the verdict follows the speedup there:
    disable < `speedup_disable_below` ≤ break_even < `speedup_beneficial_at` ≤ beneficial. With only the prior it
    follows the acceptance policy on vLLM's rate: disable < `disable_below` ≤ break_even < `beneficial_at`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    disable_below: float = Field(default=0.5, ge=0, le=1)
    beneficial_at: float = Field(default=0.65, ge=0, le=1)
    speedup_disable_below: float = Field(default=1.0, gt=0, le=10)
    speedup_beneficial_at: float = Field(default=1.1, gt=0, le=10)
    min_draft_tokens: int = Field(default=100, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.beneficial_at < self.disable_below:
            raise ValueError("beneficial_at must be >= disable_below")
        if self.speedup_beneficial_at < self.speedup_disable_below:
            raise ValueError("speedup_beneficial_at must be >= speedup_disable_below")
        return self


PROFILE_KIND = "spec-exporter/step-cost-profile"


class CostPoint(BaseModel):
    """rho measured at one batch size (the probe's concurrency), with the numbers it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: float = Field(gt=0)
    step_cost_ratio: float = Field(gt=0, le=100)
    # Evidence, for the reader: rho = acceptance_length * tpot_spec_seconds / tpot_baseline_seconds.
    acceptance_length: float | None = Field(default=None, ge=1)
    tpot_spec_seconds: float | None = Field(default=None, gt=0)
    tpot_baseline_seconds: float | None = Field(default=None, gt=0)
    requests: int | None = Field(default=None, ge=0)


class CostProfile(BaseModel):
    """A calibration profile: rho per load level for one hardware, model pair and k (`probe --write-profile`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(pattern=f"^{PROFILE_KIND}$")
    version: int = Field(ge=1, le=1)
    # The served model name (the `model_name` label): a profile for another model is not used.
    model: str = Field(min_length=1)
    num_speculative_tokens: int = Field(ge=1, le=64)
    draft_model: str | None = None
    hardware: str | None = None
    created: str | None = None
    points: tuple[CostPoint, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> CostProfile:
        sizes = [p.batch_size for p in self.points]
        if len(set(sizes)) != len(sizes):
            raise ValueError("points: batch_size values must be distinct")
        return self


@dataclass(frozen=True, slots=True)
class Window:
    """A configured window: its label value and length."""

    label: str
    seconds: float


# The prior's draft cost ratio c: 0.15 is what the middle pair of the measured table (70B <- 8B on an H200,
# docs/models.md) costs per draft step at small batch; 8B <- 1B costs 0.285 and 70B <- 1B 0.042. A parameter
# ratio understates it (small drafts are latency-bound), and an understated c overstates every modelled speedup.
DEFAULT_DRAFT_COST_RATIO = 0.15


@dataclass(frozen=True, slots=True)
class DeriveParams:
    """Everything a derivation needs besides its data; `Settings.derive_params` builds it per target."""

    windows: tuple[Window, ...]
    verdict_window: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    num_speculative_tokens: int | None = None
    draft_cost_ratio: float = DEFAULT_DRAFT_COST_RATIO
    # rho per load level for this target's hardware, model pair and k (speculation.cost_profile), if any.
    cost_profile: CostProfile | None = None


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


TemperatureBandKey = tuple[str, str, str]
"""(model_name, workload, temperature_band) of the tap's per-band series."""


@dataclass(frozen=True, slots=True)
class TemperatureBandSample:
    """The tap's cumulative series for one (model_name, workload, temperature_band)."""

    accepted_tokens: float = 0.0
    draft_tokens: float = 0.0
    acceptance: Histogram | None = None
    ttft: Histogram | None = None
    tpot: Histogram | None = None
    # Steps (as drafts), draft and accepted tokens, and per-position counts of the band's measured requests, from
    # vLLM's per-request num_spec_steps and acceptance_histogram; None from a tap that does not count them.
    spec: SpecCounters | None = None


@dataclass(frozen=True, slots=True)
class TapSample:
    """Everything the tap's `spec_tap_*` families held in one scrape (the middleware's, or the proxy's own)."""

    bands: Mapping[TemperatureBandKey, TemperatureBandSample] = field(default_factory=dict)
    # (temperature_band, outcome) → requests, summed over model names.
    requests: Mapping[tuple[str, str], float] = field(default_factory=dict)
    errors: Mapping[str, float] = field(default_factory=dict)
    # The engine's speculative configuration as (label, value) pairs (spec_tap_speculative_config_info).
    speculative: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One parsed scrape of one target, stamped with the (monotonic) time it was taken.

    `process_start` is `process_start_time_seconds` when the scrape has it: it changes at a restart, and
    changing with no counter going down means the URL reaches more than one vLLM process.
    `folded_models` counts the `model_name` values beyond the per-target cap that were folded into `other`.
    """

    taken_at: float
    generation: EngineGeneration
    engines: Mapping[EngineKey, EngineSample]
    tap: TapSample | None = None
    process_start: float | None = None
    folded_models: int = 0
