"""The tap's metric families (`spec_tap_*`): one definition both front ends fold into.

The middleware registers them in prometheus_client's default registry, so they appear on vLLM's own /metrics (and
are summed across API-server processes in its multiprocess mode: hence only Counter and Histogram). The proxy tap
registers them in a private registry, which the exporter's poller reads as data with its target's scrape.
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from spec_exporter.tap import speculative
from spec_exporter.tap.settings import TapSettings
from spec_exporter.tap.workload import FoldReason, WorkloadClasses

# 41 bounds, step 0.025: 0.5 and 0.65 (the verdict thresholds) are edges, and a percentile interpolated inside a
# bucket is never further than one bucket width from the exact sample percentile.
ACCEPTANCE_BUCKETS: tuple[float, ...] = tuple(round(i * 0.025, 3) for i in range(41))
# vLLM's own default TTFT and TPOT buckets (TIME_TO_FIRST_TOKEN_BUCKETS, INTER_TOKEN_LATENCY_BUCKETS in
# vllm/v1/metrics/buckets.py, 0.32), so tap and engine histograms line up.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TPOT_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)

# Model-name label values that are not model names.
OTHER_MODEL = "other"  # past the per-process cap of distinct names
INVALID_MODEL = "invalid"  # not encodable as UTF-8, or too long to be a name
UNKNOWN_MODEL = "unknown"  # neither the response nor the request named one
MAX_MODEL_CHARS = 200
# What makes vLLM put per-request speculative-decoding metrics into its answers (no_spec_metrics otherwise).
REMEDY = "--per-request-spec-decode-metrics summary"

REQUESTS = "spec_tap_requests_total"
DRAFT_TOKENS = "spec_tap_draft_tokens_total"
ACCEPTED_TOKENS = "spec_tap_accepted_tokens_total"
ACCEPTANCE_RATE = "spec_tap_request_acceptance_rate"
TTFT = "spec_tap_request_ttft_seconds"
TPOT = "spec_tap_request_tpot_seconds"
ERRORS = "spec_tap_errors_total"
SPEC_STEPS = "spec_tap_spec_steps_total"
ACCEPTED_PER_POSITION = "spec_tap_accepted_tokens_per_pos_total"
WORKLOAD_FOLDED = "spec_tap_workload_folded_total"
SPECULATIVE_CONFIG_INFO = "spec_tap_speculative_config_info"


class Outcome(StrEnum):
    """What became of one completion request: the closed set of `outcome` values."""

    MEASURED = "measured"
    # vLLM answered without per-request metrics and nothing explains it but the missing flag (REMEDY).
    NO_SPEC_METRICS = "no_spec_metrics"
    # vLLM answered without per-request metrics because it reports none for this request: it stopped on a stop
    # string (found after the engine finished its part) or the completion had several prompts.
    UNREPORTED = "unreported"
    NOT_MEASURABLE = "not_measurable"
    # A generating endpoint whose answers carry no per-request speculative metrics (OTHER_GENERATING_PATHS).
    OTHER_ENDPOINT = "other_endpoint"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_DISCONNECTED = "client_disconnected"
    NOT_UNDERSTOOD = "not_understood"


class ErrorStage(StrEnum):
    REQUEST = "request"
    RESPONSE = "response"
    INTERNAL = "internal"


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class TapMetrics:
    """The `spec_tap_*` families in `registry`; one instance per registry (prometheus_client refuses a second).

    Fold each request exactly once (`request`): the model-name label is resolved, capped and sanitised there.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        max_models: int | None = None,
        workloads: WorkloadClasses | None = None,
    ) -> None:
        """`max_models`: distinct model_name values (default `TapSettings().max_models`); `workloads`: the closed
        set of workload labels (default `TapSettings().workload_classes()`)."""
        self.workloads = workloads if workloads is not None else TapSettings().workload_classes()
        if max_models is None:
            max_models = TapSettings().max_models
        if max_models < 0:
            raise ValueError("max_models must not be negative")
        self._max_models = max_models
        self._models: set[str] = set()
        self._lock = threading.Lock()
        both = ("model_name", "workload", "temperature_band")
        self.requests = Counter(
            REQUESTS[: -len("_total")],
            "Completion requests seen by the tap, by what became of them.",
            (*both, "outcome"),
            registry=registry,
        )
        self.draft_tokens = Counter(
            DRAFT_TOKENS[: -len("_total")], "Draft tokens proposed for measured requests.", both, registry=registry
        )
        self.accepted_tokens = Counter(
            ACCEPTED_TOKENS[: -len("_total")], "Draft tokens accepted for measured requests.", both, registry=registry
        )
        self.acceptance = Histogram(
            ACCEPTANCE_RATE,
            "Per-request draft acceptance rate (accepted / drafted) of measured requests.",
            both,
            buckets=ACCEPTANCE_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            TTFT, "Per-request time to first token, as vLLM reports it.", both, buckets=TTFT_BUCKETS, registry=registry
        )
        self.tpot = Histogram(
            TPOT,
            "Per-request time per output token, as vLLM reports it.",
            both,
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.spec_steps = Counter(
            SPEC_STEPS[: -len("_total")],
            "Verification steps of measured requests (num_spec_steps): the denominator of the acceptance length.",
            both,
            registry=registry,
        )
        self.accepted_per_position = Counter(
            ACCEPTED_PER_POSITION[: -len("_total")],
            "Steps of measured requests whose draft token at this position was accepted (from vLLM's per-request "
            "acceptance_histogram).",
            (*both, "position"),
            registry=registry,
        )
        self.errors = Counter(
            ERRORS[: -len("_total")],
            "Inputs the tap could not read, or failures of its own; the request passed through untouched.",
            ("stage",),
            registry=registry,
        )
        for stage in ErrorStage:
            self.errors.labels(stage.value)
        self.workload_folded = Counter(
            WORKLOAD_FOLDED[: -len("_total")],
            'Requests whose workload class was not kept as a label value and was counted as workload="other".',
            ("reason",),
            registry=registry,
        )
        for reason in FoldReason:
            self.workload_folded.labels(reason.value)
        # The one gauge: a constant 1 per label set, so the largest across API-server processes is the value.
        self.speculative_info = Gauge(
            SPECULATIVE_CONFIG_INFO,
            "The engine's speculative method, k and how drafts are verified (vLLM's speculative_config), as labels.",
            speculative.LABELS,
            registry=registry,
            multiprocess_mode="max",
        )
        self._speculative_set = False
        # Children per label set, so a request costs dict lookups rather than six labels() calls (bounded: the
        # model label is capped).
        self._series: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._counts: dict[tuple[str, str, str, Outcome], Any] = {}

    def model_label(self, model: str | None) -> str:
        """The label value for a served model name; counts an `invalid` one as a request-stage error."""
        if not isinstance(model, str):
            return UNKNOWN_MODEL
        if len(model) > MAX_MODEL_CHARS or not _encodable(model):
            self.error(ErrorStage.REQUEST)
            return INVALID_MODEL
        with self._lock:
            if model in self._models:
                return model
            if len(self._models) < self._max_models:
                self._models.add(model)
                return model
        return OTHER_MODEL

    def workload_label(self, workload: str | None) -> str:
        """The label value for a request's raw class value (None: `default`); counts a fold into `other`."""
        label, folded = self.workloads.label(workload)
        if folded is not None:
            self.workload_folded.labels(folded.value).inc()
        return label

    def request(
        self,
        model: str | None,
        band: str,
        outcome: Outcome,
        *,
        accepted: int | None = None,
        drafted: int | None = None,
        ttft: float | None = None,
        tpot: float | None = None,
        steps: int | None = None,
        per_position: tuple[int, ...] | None = None,
        workload: str | None = None,
    ) -> None:
        """Fold one request (`workload`: its raw class value, None for none). Token counts count only for a
        measured request with drafts; its steps and
        per-position counts only with them (so each band's acceptance length has its own denominator)."""
        label = self.model_label(model)
        kind = self.workload_label(workload)
        outcome = Outcome(outcome)
        count = self._counts.get((label, kind, band, outcome))
        if count is None:
            count = self._counts[(label, kind, band, outcome)] = self.requests.labels(label, kind, band, outcome.value)
        count.inc()
        if outcome is not Outcome.MEASURED and ttft is None and tpot is None:
            return
        series = self._series.get((label, kind, band))
        if series is None:
            series = self._series[(label, kind, band)] = tuple(
                family.labels(label, kind, band)
                for family in (self.draft_tokens, self.accepted_tokens, self.acceptance, self.ttft, self.tpot)
            )
        draft_tokens, accepted_tokens, acceptance, ttft_hist, tpot_hist = series
        if outcome is Outcome.MEASURED and accepted is not None and drafted:
            draft_tokens.inc(drafted)
            accepted_tokens.inc(accepted)
            acceptance.observe(accepted / drafted)
            if steps and per_position is not None:
                self.spec_steps.labels(label, kind, band).inc(steps)
                for i, n in enumerate(per_position):
                    # Created at zero even when nothing was accepted there: the position's denominator exists.
                    self.accepted_per_position.labels(label, kind, band, str(i)).inc(n)
        if ttft is not None:
            ttft_hist.observe(ttft)
        if tpot is not None:
            tpot_hist.observe(tpot)

    def speculative_config(self, labels: dict[str, str] | None) -> None:
        """Export the engine's speculative configuration (from `speculative.info_labels` or `from_vllm_config`)
        once; None (no speculative decoding, or not known) exports nothing."""
        if labels is None or self._speculative_set:
            return
        self._speculative_set = True
        self.speculative_info.labels(*(labels[name] for name in speculative.LABELS)).set(1)

    def error(self, stage: ErrorStage) -> None:
        self.errors.labels(ErrorStage(stage).value).inc()
