"""Every metric the exporter emits: name, type, labels and HELP, in one place.

The collector builds families from these entries, docs/metrics.md is generated from them, and the tests check
that dashboards and rules only use names listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spec_exporter.buildinfo import BUILD_INFO_LABELS

ENGINE = ("target", "model_name", "engine")
_FRESH = "Refreshed every poll interval (see spec_decode_exporter_last_success_timestamp_seconds)."
_NO_LOAD = (
    " Acceptance-only: it ignores load (at a large batch the verify step costs more and speculation can lose at any "
    "acceptance); for evidence at the load the pool runs at, compare with a baseline pool "
    "(spec_decode_baseline_load_band_tpot_speedup) or run `spec-exporter probe --baseline-target`."
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
    (*ENGINE, "temperature_band", "verdict"),
    "Stateset: 1 for the current verdict (disable < 0.5 <= break_even < 0.65 <= beneficial by default; "
    'insufficient_data below the minimum draft tokens), over the verdict window. temperature_band="all" is '
    'the engine\'s own counters; the other bands come from the tap and carry engine="".' + _NO_LOAD + " " + _FRESH,
)
BREAK_EVEN = MetricSpec(
    "spec_decode_break_even_acceptance_rate",
    "gauge",
    ENGINE,
    "Acceptance at which the speculative-sampling model (E = (1-a^(k+1))/(1-a), speedup = E/(1+k*c)) "
    "breaks even, for this k and the configured draft cost ratio c.",
)
EXPECTED_SPEEDUP = MetricSpec(
    "spec_decode_expected_speedup",
    "gauge",
    (*ENGINE, "window"),
    "Modelled speedup at the configured k from the measured acceptance length: (1 + accepted / drafts) / "
    "(1 + k*c), c the configured draft cost ratio." + _NO_LOAD + " " + _FRESH,
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
    "argmax of (1 + sum_{i<j} p_i) / (1 + j*c); 0 when no k models a speedup above 1. Equal to the configured k "
    "means a larger k might do better (nothing beyond it is measured)." + _NO_LOAD + " " + _FRESH,
)
RECOMMENDED_SPEEDUP = MetricSpec(
    "spec_decode_recommended_expected_speedup",
    "gauge",
    (*ENGINE, "window"),
    "Modelled speedup at spec_decode_recommended_num_speculative_tokens (1 when that is 0). " + _FRESH,
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
BAND = ("target", "model_name", "temperature_band")
_TAP = (
    "Per request, from the tap (metrics.speculative_decoding in vLLM's responses, joined with the request's "
    "temperature by the vLLM middleware or the proxy tap), by temperature band; restarts stitched out."
)
REQUEST_ACCEPTANCE = MetricSpec(
    "spec_decode_request_acceptance_rate",
    "histogram",
    BAND,
    "Acceptance rate of each request (accepted / draft tokens). " + _TAP,
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
    "P10/P50/P90 of per-request acceptance over the window (quantile label), from the increase of the tap's "
    "acceptance histogram (buckets every 0.025) computed as PromQL histogram_quantile does; _count and _sum are "
    "cumulative over measured requests. A healthy mean can hide a low-acceptance slice: watch P10. " + _TAP,
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
    "twice in one scrape), multiple_processes (the URL reaches several vLLM processes: poll each pod).",
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
    DIVERGENCE,
    GENERATION_TOKENS_RATE,
    PREEMPTIONS_RATE,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    KV_CACHE_USAGE,
    VERDICT,
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
    REQUEST_WINDOW_DRAFT_TOKENS,
    REQUEST_WINDOW_ACCEPTED_TOKENS,
    TAP_REQUESTS,
    TAP_ERRORS,
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


def markdown() -> str:
    """docs/metrics.md, generated from this catalogue (tests/test_docs.py keeps the file in sync)."""
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
        "**Load.** The acceptance verdict, `spec_decode_expected_speedup` and the recommended k judge acceptance",
        "alone and ignore load: the same acceptance is a speedup at batch 1 and can be a slowdown when the verify step",
        "is compute-bound at a large batch. Only a measurement at the load says which. Configure a baseline target",
        "(the same model served without speculative decoding, `role: baseline`) and the exporter compares TPOT per",
        "load band (`spec_decode_baseline_load_band_tpot_speedup`, read at the band the pool is in now,",
        "`spec_decode_load_band_info`); or run `spec-exporter probe --baseline-target URL --concurrency 1,4,16`,",
        "which also suggests a `num_speculative_tokens_per_batch_size` schedule. Load bands are running requests per",
        "engine (`vllm:num_requests_running`): 1, 2-4, 5-8, 9-16, 17-32, 33-64, 65+.",
        "",
        "| name | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    for spec in ALL:
        labels = ", ".join(f"`{label}`" for label in spec.labels)
        lines.append(f"| `{spec.exposed_name}` | {spec.type} | {labels} | {spec.help.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
