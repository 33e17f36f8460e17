"""Every metric the exporter emits: name, type, labels and HELP, in one place.

The collector builds families from these entries, docs/metrics.md is generated from them, and the tests check
that dashboards and rules only use names listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from spec_exporter.buildinfo import BUILD_INFO_LABELS
from spec_exporter.tap import speculative

ENGINE = ("target", "model_name", "engine")
_FRESH = "Refreshed every poll interval (see spec_decode_exporter_last_success_timestamp_seconds)."
_COST = (
    " In vLLM's units, from the one cost model (docs/models.md): the step-cost ratio rho at the window's load "
    "(spec_decode_step_cost_ratio); source says where rho came from: baseline (a baseline pool at the same load "
    "band), calibration (a profile written by `spec-exporter probe --write-profile`, read at the live load) or "
    "prior (1 + k_eff*c, which ignores load)."
)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    type: Literal["gauge", "counter", "histogram", "summary"]
    labels: tuple[str, ...]
    help: str

    @property
    def exposed_name(self) -> str:
        return self.name + "_total" if self.type == "counter" else self.name


ENABLED = MetricSpec(
    "spec_decode_enabled",
    "gauge",
    ENGINE,
    "1 if the target exposes speculative-decoding series (vllm:spec_decode_*), 0 if it runs without. " + _FRESH,
)
ACCEPTANCE_RATE = MetricSpec(
    "spec_decode_draft_acceptance_rate",
    "gauge",
    (*ENGINE, "window"),
    "Accepted / proposed draft tokens over the window, from the increase of "
    "vllm:spec_decode_num_accepted_tokens_total and vllm:spec_decode_num_draft_tokens_total "
    '(window="lifetime": V0\'s vllm:spec_decode_draft_acceptance_rate gauge). ' + _FRESH,
)
MEAN_ACCEPTANCE_LENGTH = MetricSpec(
    "spec_decode_mean_acceptance_length",
    "gauge",
    (*ENGINE, "window"),
    "Tokens per verification step including the bonus token: 1 + accepted tokens / drafts over the window. " + _FRESH,
)
POSITION_ACCEPTANCE_RATE = MetricSpec(
    "spec_decode_position_acceptance_rate",
    "gauge",
    (*ENGINE, "window", "position"),
    "Share of drafts whose token at this position was accepted, over the window, from "
    "vllm:spec_decode_num_accepted_tokens_per_pos_total / vllm:spec_decode_num_drafts_total. " + _FRESH,
)
WINDOW_DRAFT_TOKENS = MetricSpec(
    "spec_decode_window_draft_tokens",
    "gauge",
    (*ENGINE, "window"),
    "Draft tokens proposed over the window (denominator of the acceptance rate). " + _FRESH,
)
WINDOW_ACCEPTED_TOKENS = MetricSpec(
    "spec_decode_window_accepted_tokens",
    "gauge",
    (*ENGINE, "window"),
    "Draft tokens accepted over the window (numerator of the acceptance rate). " + _FRESH,
)
WINDOW_DRAFTS = MetricSpec(
    "spec_decode_window_drafts",
    "gauge",
    (*ENGINE, "window"),
    "Drafts (verification steps with at least one draft token) over the window. " + _FRESH,
)
WINDOW_POSITION_ACCEPTED = MetricSpec(
    "spec_decode_window_position_accepted_tokens",
    "gauge",
    (*ENGINE, "window", "position"),
    "Drafts whose token at this position was accepted, over the window. " + _FRESH,
)
DRAFT_TOKENS = MetricSpec(
    "spec_decode_draft_tokens",
    "counter",
    ENGINE,
    "Draft tokens proposed since the exporter first saw the engine, with vLLM restarts stitched out "
    "(from vllm:spec_decode_num_draft_tokens_total). Use rate() on it across pods.",
)
ACCEPTED_TOKENS = MetricSpec(
    "spec_decode_accepted_tokens",
    "counter",
    ENGINE,
    "Draft tokens accepted since the exporter first saw the engine, with vLLM restarts stitched out "
    "(from vllm:spec_decode_num_accepted_tokens_total).",
)
DRAFTS = MetricSpec(
    "spec_decode_drafts",
    "counter",
    ENGINE,
    "Drafts since the exporter first saw the engine, with vLLM restarts stitched out "
    "(from vllm:spec_decode_num_drafts_total).",
)
POSITION_ACCEPTED = MetricSpec(
    "spec_decode_position_accepted_tokens",
    "counter",
    (*ENGINE, "position"),
    "Accepted draft tokens per position since the exporter first saw the engine "
    "(from vllm:spec_decode_num_accepted_tokens_per_pos_total).",
)
NUM_SPECULATIVE_TOKENS = MetricSpec(
    "spec_decode_num_speculative_tokens",
    "gauge",
    ENGINE,
    "k, draft tokens proposed per step: the number of position series, or the configured value.",
)
LATENCY = MetricSpec(
    "spec_decode_latency_seconds",
    "summary",
    (*ENGINE, "window", "metric"),
    "Latency quantiles over the window, computed from histogram bucket increases exactly as PromQL "
    "histogram_quantile does; _count and _sum are cumulative (restarts stitched out). metric: ttft "
    "(vllm:time_to_first_token_seconds), itl (vllm:inter_token_latency_seconds, one observation per engine "
    "step), tpot (vllm:request_time_per_output_token_seconds, one per request), e2e "
    "(vllm:e2e_request_latency_seconds). " + _FRESH,
)
LATENCY_LOWEST_BUCKET = MetricSpec(
    "spec_decode_latency_lowest_bucket_seconds",
    "gauge",
    (*ENGINE, "metric"),
    "Upper bound of the lowest bucket of vLLM's histogram behind spec_decode_latency_seconds{metric}: a quantile "
    'at or below it is interpolated from 0 inside that bucket and only says "below this bound" (vLLM\'s TPOT '
    "and ITL buckets start at 10 ms). " + _FRESH,
)
DIVERGENCE = MetricSpec(
    "spec_decode_latency_divergence_ratio",
    "gauge",
    (*ENGINE, "window", "metric"),
    "P99 / P50 latency over the window: widening after enabling speculative decoding means the tail pays "
    "for the median. " + _FRESH,
)
GENERATION_TOKENS_RATE = MetricSpec(
    "spec_decode_generation_tokens_per_second",
    "gauge",
    (*ENGINE, "window"),
    "Generated tokens per second over the window (vllm:generation_tokens_total, accepted drafts included). " + _FRESH,
)
PREEMPTIONS_RATE = MetricSpec(
    "spec_decode_preemptions_per_second",
    "gauge",
    (*ENGINE, "window"),
    "Preemptions per second over the window (vllm:num_preemptions_total): the KV-cache squeeze. " + _FRESH,
)
REQUESTS_RUNNING = MetricSpec(
    "spec_decode_requests_running",
    "gauge",
    ENGINE,
    "Requests running on the engine at the last poll (vllm:num_requests_running). " + _FRESH,
)
REQUESTS_WAITING = MetricSpec(
    "spec_decode_requests_waiting",
    "gauge",
    ENGINE,
    "Requests waiting on the engine at the last poll (vllm:num_requests_waiting). " + _FRESH,
)
KV_CACHE_USAGE = MetricSpec(
    "spec_decode_kv_cache_usage_ratio",
    "gauge",
    ENGINE,
    "KV-cache usage 0..1 at the last poll (vllm:kv_cache_usage_perc, or vllm:gpu_cache_usage_perc). " + _FRESH,
)
VERDICT = MetricSpec(
    "spec_decode_verdict",
    "gauge",
    (*ENGINE, "workload", "temperature_band", "verdict"),
    "Stateset: 1 for the current verdict over the verdict window (insufficient_data below the minimum draft "
    "tokens). One rule: with evidence at the current load (spec_decode_step_cost_ratio source baseline or "
    "calibration) it follows the speedup there (disable < 1.0 <= break_even < 1.1 <= beneficial by default); "
    "with only the prior it follows the acceptance policy on vLLM's rate (disable < 0.5 <= break_even < 0.65 "
    'by default), which ignores load. temperature_band="all" is the engine\'s own counters (workload=""); the '
    'other bands come from the tap, per workload class, and carry engine="". ' + _FRESH,
)
STEP_COST_RATIO = MetricSpec(
    "spec_decode_step_cost_ratio",
    "gauge",
    (*ENGINE, "window", "source"),
    "rho: time of one speculative step / time of one plain step at the window's load (running batch), for the "
    "effective k. Every modelled number divides by it: speedup = acceptance length / rho, break-even rate = "
    "(rho - 1) / k_eff." + _COST + " " + _FRESH,
)
BREAK_EVEN = MetricSpec(
    "spec_decode_break_even_acceptance_rate",
    "gauge",
    (*ENGINE, "window", "source"),
    "The acceptance rate (vLLM's accepted / draft tokens, the same quantity as spec_decode_draft_acceptance_rate) "
    "at which speculation breaks even at the window's load: (rho - 1) / k_eff; c under the prior. Absent when no "
    "rate does." + _COST + " " + _FRESH,
)
EXPECTED_SPEEDUP = MetricSpec(
    "spec_decode_expected_speedup",
    "gauge",
    (*ENGINE, "window", "source"),
    "Speedup at the window's load per speculating step: acceptance length (1 + accepted / drafts) / rho. Under "
    "source baseline it equals the measured TPOT speedup at the load band." + _COST + " " + _FRESH,
)
EFFECTIVE_K = MetricSpec(
    "spec_decode_effective_num_speculative_tokens",
    "gauge",
    (*ENGINE, "window"),
    "Draft tokens per draft over the window: the k vLLM actually drafted (below the configured k when "
    "num_speculative_tokens_per_batch_size or the proposer drafts fewer). " + _FRESH,
)
SPECULATED_SHARE = MetricSpec(
    "spec_decode_speculated_step_ratio",
    "gauge",
    (*ENGINE, "window"),
    "Share of decode steps that drafted: drafts / vllm:inter_token_latency_seconds observations over the window "
    "(vLLM observes one ITL per request per decode step). Below 1 when a batch-size schedule turns speculation "
    "off. " + _FRESH,
)
RECOMMENDED_K = MetricSpec(
    "spec_decode_recommended_num_speculative_tokens",
    "gauge",
    (*ENGINE, "window"),
    "The k in 1..configured k with the highest modelled speedup from the per-position acceptance p_i: "
    "argmax of (1 + sum_{i<j} p_i) / rho_j, rho_j = 1 + (j/k)*(rho - 1); 0 when no k models a speedup above 1. "
    "Equal to the configured k means a larger k might do better (nothing beyond it is measured). Absent when a "
    "batch-size schedule drafted fewer than k and the per-position denominators vLLM does not export leave the "
    "answer open." + _COST + " " + _FRESH,
)
RECOMMENDED_SPEEDUP = MetricSpec(
    "spec_decode_recommended_expected_speedup",
    "gauge",
    (*ENGINE, "window", "source"),
    "Modelled speedup at spec_decode_recommended_num_speculative_tokens (1 when that is 0)." + _COST + " " + _FRESH,
)
LOAD_RUNNING = MetricSpec(
    "spec_decode_load_running_requests",
    "gauge",
    (*ENGINE, "window"),
    "Running requests per engine over the window while it served: the time-weighted mean of "
    "vllm:num_requests_running over the poll intervals that were busy (each interval the mean of its two "
    "readings, at least 1 when tokens were generated); absent for an idle window. " + _FRESH,
)
LOAD_BAND_INFO = MetricSpec(
    "spec_decode_load_band_info",
    "gauge",
    (*ENGINE, "load_band"),
    "1 for the load band the engine runs at now (spec_decode_load_running_requests over the shortest window, "
    "rounded to a whole batch size): 1, 2-4, 5-8, 9-16, 17-32, 33-64 or 65+. Absent while the engine is idle. "
    + _FRESH,
)
LOAD_BAND_LATENCY = MetricSpec(
    "spec_decode_load_band_latency_seconds",
    "gauge",
    ("target", "load_band", "window", "metric", "quantile"),
    "TPOT or ITL quantile (0.5, 0.99) of the target's requests by the load band of the poll interval they were "
    "observed in, for a target compared with a baseline and for its baseline. " + _FRESH,
)
LOAD_BAND_REQUESTS = MetricSpec(
    "spec_decode_load_band_requests",
    "gauge",
    ("target", "load_band", "window"),
    "Requests finished (TPOT observations) at the load band over the window, for a target compared with a "
    "baseline and for its baseline. " + _FRESH,
)
BASELINE_TPOT_SPEEDUP = MetricSpec(
    "spec_decode_baseline_tpot_speedup_ratio",
    "gauge",
    ("target", "baseline", "window"),
    "Measured speedup: baseline pool's TPOT p50 / this target's TPOT p50 over the window, all engines. " + _FRESH,
)
BASELINE_LOAD_BAND_SPEEDUP = MetricSpec(
    "spec_decode_baseline_load_band_tpot_speedup",
    "gauge",
    ("target", "baseline", "load_band", "window"),
    "Measured speedup at a load band: the baseline pool's TPOT p50 / this target's TPOT p50 over the requests each "
    "finished at that band in the window; present only when both pools were seen at the band. " + _FRESH,
)
BASELINE_LOAD_BAND_REQUESTS = MetricSpec(
    "spec_decode_baseline_load_band_requests",
    "gauge",
    ("target", "baseline", "load_band", "window"),
    "Evidence behind spec_decode_baseline_load_band_tpot_speedup: the fewer of the two pools' requests "
    "finished at the band in the window. " + _FRESH,
)
BASELINE_P99_RATIO = MetricSpec(
    "spec_decode_baseline_p99_latency_ratio",
    "gauge",
    ("target", "baseline", "window", "metric"),
    "This target's p99 / the baseline pool's p99 over the window, all engines; above 1 the tail is worse "
    "with speculative decoding. " + _FRESH,
)
BAND = ("target", "model_name", "workload", "temperature_band")
_TAP = (
    "Per request, from the tap (metrics.speculative_decoding in vLLM's responses, joined with the request's "
    "temperature by the vLLM middleware or the proxy tap), by temperature band; restarts stitched out."
)
REQUEST_ACCEPTANCE = MetricSpec(
    "spec_decode_request_acceptance_rate",
    "histogram",
    BAND,
    "Acceptance rate of each request (accepted / draft tokens), on the tap's own buckets (every 0.025): "
    "histogram_quantile over them gives what spec_decode_request_acceptance_rate_quantile reads. " + _TAP,
)
REQUEST_DRAFT_TOKENS = MetricSpec(
    "spec_decode_request_draft_tokens", "counter", BAND, "Draft tokens proposed for requests. " + _TAP
)
REQUEST_ACCEPTED_TOKENS = MetricSpec(
    "spec_decode_request_accepted_tokens", "counter", BAND, "Draft tokens accepted for requests. " + _TAP
)
REQUEST_TTFT = MetricSpec(
    "spec_decode_request_ttft_seconds",
    "histogram",
    BAND,
    "Time to first token per request: vLLM's per-request timing (queue + first token) when the response has it, "
    "else measured at the tap from the first streamed event.",
)
REQUEST_TPOT = MetricSpec(
    "spec_decode_request_tpot_seconds",
    "histogram",
    BAND,
    "Time per output token per request (decode time / (tokens - 1)): vLLM's mean_itl_ms when the response has "
    "it, else measured at the tap between the first and last streamed events.",
)
REQUEST_ACCEPTANCE_QUANTILE = MetricSpec(
    "spec_decode_request_acceptance_rate_quantile",
    "summary",
    (*BAND, "window"),
    "P10/P50/P90 of per-request acceptance over the window (quantile label): PromQL's histogram_quantile over the "
    "window's increase of spec_decode_request_acceptance_rate (the same buckets); _count and _sum are cumulative "
    "over measured requests. A healthy mean can hide a low-acceptance slice: watch P10. " + _TAP,
)
BAND_EXPECTED_SPEEDUP = MetricSpec(
    "spec_decode_request_expected_speedup",
    "gauge",
    (*BAND, "window", "source"),
    "Speedup of the band's requests at the engine's current load: spec_decode_request_mean_acceptance_length / "
    "rho, rho the engine's (spec_decode_step_cost_ratio) priced for the k the band drafted." + _COST + " " + _TAP,
)
BAND_ACCEPTANCE_LENGTH = MetricSpec(
    "spec_decode_request_mean_acceptance_length",
    "gauge",
    (*BAND, "window"),
    "Tokens per verification step of the band's requests that finished in the window: 1 + accepted / steps "
    "(vLLM's per-request num_spec_steps); from a tap that does not count steps, 1 + k_eff * r_band with the "
    "engine's effective k. " + _TAP,
)
BAND_RECOMMENDED_K = MetricSpec(
    "spec_decode_request_recommended_num_speculative_tokens",
    "gauge",
    (*BAND, "window"),
    "The best k for the band's requests at the engine's current load, from their per-position acceptance (vLLM's "
    "per-request acceptance_histogram) and rho_j; 0 when no k pays; absent when the denominators leave it open "
    "(see spec_decode_recommended_num_speculative_tokens). " + _TAP,
)
REQUEST_WINDOW_DRAFT_TOKENS = MetricSpec(
    "spec_decode_request_window_draft_tokens",
    "gauge",
    (*BAND, "window"),
    "Draft tokens of requests that finished within the window (denominator of the band's acceptance). " + _TAP,
)
REQUEST_WINDOW_ACCEPTED_TOKENS = MetricSpec(
    "spec_decode_request_window_accepted_tokens",
    "gauge",
    (*BAND, "window"),
    "Accepted draft tokens of requests that finished within the window (numerator). " + _TAP,
)
TAP_REQUESTS = MetricSpec(
    "spec_decode_tap_requests",
    "counter",
    ("target", "temperature_band", "outcome"),
    "Generating requests through the tap by outcome: measured; no_spec_metrics (vLLM without "
    "--per-request-spec-decode-metrics summary); unreported (vLLM has none for the request: a stop string, "
    "several prompts); not_measurable (n > 1, a stream the tap could not ask usage for, a response it cannot read "
    "safely); other_endpoint (/v1/responses, /v1/messages, the batch route and vLLM's other generating "
    "endpoints, whose answers carry no per-request metrics); upstream_error; client_disconnected; not_understood. "
    "Restarts stitched out.",
)
TAP_ERRORS = MetricSpec(
    "spec_decode_tap_errors",
    "counter",
    ("target", "stage"),
    "Requests or responses the tap could not read (stage request, response, internal); each was passed through "
    "untouched.",
)
TAP_COVERAGE = MetricSpec(
    "spec_decode_tap_coverage_ratio",
    "gauge",
    ("target", "window"),
    "Draft tokens the tap measured / draft tokens counted by the engine over the window. Below 1 by the drafts "
    "of requests it counted but could not measure (spec_decode_tap_requests_total outcomes other than measured), "
    "of traffic that bypasses it, and of requests still running.",
)
TAP_WINDOW_DRAFT_TOKENS = MetricSpec(
    "spec_decode_tap_window_draft_tokens",
    "gauge",
    ("target", "window"),
    "Draft tokens of all requests the tap measured within the window (numerator of the coverage ratio).",
)
SPECULATIVE_CONFIG_INFO = MetricSpec(
    "spec_decode_speculative_config_info",
    "gauge",
    ("target", *speculative.LABELS),
    "1, labelled with what decides acceptance besides temperature: the speculative method (draft_model, eagle, "
    "eagle3, mtp, ngram, ...), k, the draft model, how drafts are sampled (greedy, probabilistic) and verified "
    "(rejection_sample_method standard = probabilistic rejection sampling, synthetic, block); greedy requests are "
    'verified by exact match whatever it says. "" where vLLM has no such field. From the middleware (vLLM\'s own '
    "speculative_config) or, with the proxy tap, from the speculation settings. Absent when neither knows.",
)
TAP_METRICS_MISSING = MetricSpec(
    "spec_decode_tap_per_request_metrics_missing",
    "gauge",
    ("target",),
    "1 while vLLM answers single-sequence requests without per-request speculative-decoding metrics: start it "
    "with --per-request-spec-decode-metrics summary.",
)
FOLDED_MODELS = MetricSpec(
    "spec_decode_exporter_folded_models",
    "gauge",
    ("target",),
    'model_name values beyond the per-target cap (poll.max_models) folded into model_name="other" at the last '
    "poll: above 0, raise the cap or look at what names the target serves.",
)
TARGET_UP = MetricSpec(
    "spec_decode_exporter_target_up",
    "gauge",
    ("target",),
    "1 if the last poll of the target's /metrics succeeded and parsed, else 0.",
)
POLL_DURATION = MetricSpec(
    "spec_decode_exporter_poll_duration_seconds",
    "gauge",
    ("target",),
    "Duration of the last poll of the target: fetch, parse and derive.",
)
LAST_SUCCESS = MetricSpec(
    "spec_decode_exporter_last_success_timestamp_seconds",
    "gauge",
    ("target",),
    "Unix time of the last successful poll of the target.",
)
POLL_ERRORS = MetricSpec(
    "spec_decode_exporter_poll_errors",
    "counter",
    ("target", "reason"),
    "Failed polls by reason: timeout, connection_error, http_status, body_too_large, truncated, parse_error, "
    "unknown_layout, not_an_engine (a router or proxy, not a vLLM engine), duplicate_series (the same series "
    "twice in one scrape), multiple_processes (the URL reaches several vLLM processes: poll each pod), tls_error "
    "(an https target's certificate does not verify against its tls_config).",
)
BUILD_INFO = MetricSpec(
    "spec_decode_exporter_build_info",
    "gauge",
    BUILD_INFO_LABELS,
    "Always 1; labels carry the exporter's version, git revision and branch, and Python version.",
)

# Every metric, in exposition order.
ALL: tuple[MetricSpec, ...] = (
    ENABLED,
    ACCEPTANCE_RATE,
    MEAN_ACCEPTANCE_LENGTH,
    POSITION_ACCEPTANCE_RATE,
    WINDOW_DRAFT_TOKENS,
    WINDOW_ACCEPTED_TOKENS,
    WINDOW_DRAFTS,
    WINDOW_POSITION_ACCEPTED,
    DRAFT_TOKENS,
    ACCEPTED_TOKENS,
    DRAFTS,
    POSITION_ACCEPTED,
    NUM_SPECULATIVE_TOKENS,
    LATENCY,
    LATENCY_LOWEST_BUCKET,
    DIVERGENCE,
    GENERATION_TOKENS_RATE,
    PREEMPTIONS_RATE,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    KV_CACHE_USAGE,
    VERDICT,
    STEP_COST_RATIO,
    BREAK_EVEN,
    EXPECTED_SPEEDUP,
    EFFECTIVE_K,
    SPECULATED_SHARE,
    RECOMMENDED_K,
    RECOMMENDED_SPEEDUP,
    LOAD_RUNNING,
    LOAD_BAND_INFO,
    LOAD_BAND_LATENCY,
    LOAD_BAND_REQUESTS,
    BASELINE_TPOT_SPEEDUP,
    BASELINE_LOAD_BAND_SPEEDUP,
    BASELINE_LOAD_BAND_REQUESTS,
    BASELINE_P99_RATIO,
    REQUEST_ACCEPTANCE,
    REQUEST_DRAFT_TOKENS,
    REQUEST_ACCEPTED_TOKENS,
    REQUEST_TTFT,
    REQUEST_TPOT,
    REQUEST_ACCEPTANCE_QUANTILE,
    BAND_EXPECTED_SPEEDUP,
    BAND_ACCEPTANCE_LENGTH,
    BAND_RECOMMENDED_K,
    REQUEST_WINDOW_DRAFT_TOKENS,
    REQUEST_WINDOW_ACCEPTED_TOKENS,
    TAP_REQUESTS,
    TAP_ERRORS,
    SPECULATIVE_CONFIG_INFO,
    TAP_COVERAGE,
    TAP_WINDOW_DRAFT_TOKENS,
    TAP_METRICS_MISSING,
    FOLDED_MODELS,
    TARGET_UP,
    POLL_DURATION,
    LAST_SUCCESS,
    POLL_ERRORS,
    BUILD_INFO,
)


def _tap() -> Any:
    """The tap's metrics module: the one import of it here, lazily (the exporter never needs its registry)."""
    from spec_exporter.tap import metrics

    return metrics


def tap_families() -> tuple[MetricSpec, ...]:
    """The middleware tap's `spec_tap_*` families (on vLLM's own /metrics), read from their one definition in the
    tap. Imported here, lazily and only here: the exporter itself never needs the tap's registry."""
    from prometheus_client import CollectorRegistry

    tap = _tap()
    families = tap.TapMetrics(CollectorRegistry())
    buckets = {
        tap.ACCEPTANCE_RATE: tap.ACCEPTANCE_BUCKETS,
        tap.TTFT: tap.TTFT_BUCKETS,
        tap.TPOT: tap.TPOT_BUCKETS,
    }
    specs = []
    for family in (
        families.requests,
        families.draft_tokens,
        families.accepted_tokens,
        families.acceptance,
        families.ttft,
        families.tpot,
        families.spec_steps,
        families.accepted_per_position,
        families.errors,
        families.workload_folded,
        families.speculative_info,
    ):
        (described,) = family.describe()
        # The tap registers counters and histograms (multiprocess-safe), and one info gauge.
        kind: Literal["counter", "histogram", "gauge"] = (
            "histogram" if described.type == "histogram" else "gauge" if described.type == "gauge" else "counter"
        )
        text = described.documentation
        if described.name in buckets:
            text += " Buckets: " + " ".join(f"{b:g}" for b in buckets[described.name]) + "."
        specs.append(MetricSpec(described.name, kind, tuple(family._labelnames), text))
    return tuple(specs)


def tap_sample_names() -> set[str]:
    """Every sample name of the tap's families, as Prometheus stores them."""
    names = set()
    for spec in tap_families():
        names.add(spec.exposed_name)
        if spec.type == "histogram":
            names |= {spec.name + "_bucket", spec.name + "_count", spec.name + "_sum"}
    return names


def _workload_bound() -> list[str]:
    from spec_exporter.tap.settings import TapSettings

    tap = TapSettings()
    bands = len(tap.bands.labels)
    classes = tap.workload_classes().bound
    return [
        "**Workload classes.** The per-band series (`temperature_band`, from the tap) also carry `workload`, the",
        "request's class: from the header `tap.workload_header`, else the model alias (`tap.workload_from_model`),",
        "else the route prefix (`tap.workload_from_route`), else `default`. The set is closed: the classes listed in",
        "`tap.workloads`, or without a list the first `tap.max_workloads`, plus `default` and `other` (everything",
        "else, counted in the tap's `spec_tap_workload_folded_total{reason}`). The bound per `model_name` and window",
        f"is bands × classes = {bands} × (max_workloads + 2), {bands} × {classes} = {bands * classes} by default",
        f"({bands} band values with the default edges, invalid and unknown included; max_workloads",
        f"{tap.max_workloads}); `model_name` is capped by `tap.max_models` ({tap.max_models}). The tap's own",
        "per-band `spec_tap_*` families on vLLM's /metrics carry the same `model_name`, `workload` and",
        "`temperature_band` labels under the same bound.",
    ]


def markdown() -> str:
    """docs/metrics.md, generated from this catalogue (tests/unit/test_docs.py keeps the file in sync)."""
    lines = [
        "# Exported metrics",
        "",
        "Generated from `spec_exporter/catalog.py` by `make docs`; do not edit by hand.",
        "",
        "Every derived series carries `target` (the configured target name), `model_name` and `engine` (vLLM's",
        "data-parallel rank; empty on the V0 engine). `window` is a configured window such as `1m` or `5m`",
        "(`lifetime` for the V0 gauge). Derived series are absent while a target is down, and acceptance series are",
        "absent (not zero) when the target runs without speculative decoding.",
        "",
        "**Cost and load.** Every modelled number (`spec_decode_expected_speedup`, the break-even rate, the",
        "recommended k, the speedup per temperature band) divides by one step-cost ratio rho at the load the engine",
        "runs at (`spec_decode_step_cost_ratio`), and carries a `source` label saying where rho came from:",
        "`baseline` (a baseline target at the same load band, `role: baseline`), `calibration` (a profile written",
        "by `spec-exporter probe --baseline-target URL --concurrency 1,2,4 --write-profile FILE`, configured as",
        "`speculation.cost_profile`, interpolated at the live load) or `prior` (1 + k_eff*c, which ignores load).",
        "With baseline or calibration evidence the verdict follows the speedup at that load; with only the prior it",
        "follows the acceptance policy (0.5 / 0.65 of vLLM's rate). See docs/models.md. Load bands are running",
        "requests per engine (`vllm:num_requests_running`): 1, 2-4, 5-8, 9-16, 17-32, 33-64, 65+.",
        "",
        *_workload_bound(),
        "",
        "| name | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    lines += _rows(ALL)
    lines += [
        "",
        "## The tap's families on vLLM's /metrics (`spec_tap_*`)",
        "",
        "The middleware tap (`vllm serve --middleware spec_exporter.middleware.SpecDecodeMiddleware`) registers",
        "these in vLLM's own registry, so they appear on vLLM's `/metrics` (summed across API-server processes in",
        "multiprocess mode) and Prometheus scrapes them with vLLM's series: the mixin's base layer",
        "(`alerts/spec-decode-base.*.yaml`) reads them with no sidecar. The proxy tap keeps them in a private",
        "registry that the exporter reads and re-exports as `spec_decode_request_*` and `spec_decode_tap_*` above.",
        "`temperature_band` is one of the configured bands (`0`, `0-0.3`, `0.3-0.5`, `0.5-0.7`, `0.7-1.0`, `1.0+` by",
        "default, `invalid`, `unknown`); `model_name` is capped (past the cap `other`; `invalid`, `unknown`);",
        "`outcome` is one of "
        + ", ".join(f"`{o.value}`" for o in _tap().Outcome)
        + "; `stage` one of "
        + ", ".join(f"`{e.value}`" for e in _tap().ErrorStage)
        + ".",
        "",
        "| name | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    lines += _rows(tap_families())
    return "\n".join(lines) + "\n"


def _rows(specs: tuple[MetricSpec, ...]) -> list[str]:
    return [
        f"| `{spec.exposed_name}` | {spec.type} | {', '.join(f'`{label}`' for label in spec.labels)} | "
        f"{spec.help.replace('|', '/')} |"
        for spec in specs
    ]
