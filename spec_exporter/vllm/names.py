"""Every vLLM sample name the exporter reads, in one place.

On the wire a counter's samples carry `_total` even though vLLM registers most counters without it, and a
histogram's samples are `<family>_bucket`, `_count` and `_sum`. Single-process vLLM also writes a
`<family>_created` gauge family beside every counter and histogram; those names are simply not listed here, so
exact-name matching skips them (a prefix match would pick up their epoch values).
"""

from __future__ import annotations

from spec_exporter.tap import metrics as tap
from spec_exporter.tap import speculative
from spec_exporter.types import LatencyMetric

PREFIX = "vllm:"

SPEC_DRAFTS = "vllm:spec_decode_num_drafts_total"
SPEC_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
SPEC_ACCEPTED_TOKENS = "vllm:spec_decode_num_accepted_tokens_total"
SPEC_ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
# V0 engine only: accepted/draft since engine start. Its presence marks a V0 scrape, whose spec counters are
# sums of running totals (vllm PR #15415, never merged) and must not be differentiated.
V0_ACCEPTANCE_RATE = "vllm:spec_decode_draft_acceptance_rate"

GENERATION_TOKENS = "vllm:generation_tokens_total"
PREEMPTIONS = "vllm:num_preemptions_total"
REQUESTS_RUNNING = "vllm:num_requests_running"
REQUESTS_WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
KV_CACHE_USAGE_LEGACY = "vllm:gpu_cache_usage_perc"

# Histogram families by the latency they measure. `time_per_output_token_seconds` is the pre-0.11 name of the
# per-step latency that became `inter_token_latency_seconds`; the per-request TPOT is a different family.
LATENCY_FAMILIES: dict[str, LatencyMetric] = {
    "vllm:time_to_first_token_seconds": LatencyMetric.TTFT,
    "vllm:inter_token_latency_seconds": LatencyMetric.ITL,
    "vllm:request_time_per_output_token_seconds": LatencyMetric.TPOT,
    "vllm:e2e_request_latency_seconds": LatencyMetric.E2E,
}
LEGACY_LATENCY_FAMILIES: dict[str, LatencyMetric] = {
    "vllm:time_per_output_token_seconds": LatencyMetric.ITL,
}

LABEL_MODEL = "model_name"
LABEL_ENGINE = "engine"
LABEL_POSITION = "position"
LABEL_LE = "le"

# Not vLLM's own: prometheus_client's process collector. It changes when the process behind the URL changes.
PROCESS_START = "process_start_time_seconds"

# The tap's families (spec_exporter/tap/metrics.py), written by the tap middleware inside vLLM's API server
# or by the proxy tap: sample name → the field it feeds. Labels: model_name, workload, temperature_band (and outcome,
# stage).
TAP_PREFIX = "spec_tap_"
TAP_COUNTERS: dict[str, str] = {
    tap.REQUESTS: "requests",
    tap.DRAFT_TOKENS: "draft_tokens",
    tap.ACCEPTED_TOKENS: "accepted_tokens",
    tap.ERRORS: "errors",
    tap.SPEC_STEPS: "spec_steps",
    tap.ACCEPTED_PER_POSITION: "per_position",
}
# The engine's speculative configuration as labels (an info gauge, 1).
TAP_SPECULATIVE_INFO = tap.SPECULATIVE_CONFIG_INFO
TAP_SPECULATIVE_LABELS = speculative.LABELS
TAP_HISTOGRAMS: dict[str, str] = {tap.ACCEPTANCE_RATE: "acceptance", tap.TTFT: "ttft", tap.TPOT: "tpot"}
LABEL_BAND = "temperature_band"
LABEL_WORKLOAD = "workload"
# The class of a tap that predates workload classes (spec_exporter.tap.workload.DEFAULT).
DEFAULT_WORKLOAD = "default"
LABEL_OUTCOME = "outcome"
LABEL_STAGE = "stage"
LABEL_SERVER = "server"
