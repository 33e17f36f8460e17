"""Every threshold, duration and selector of the rules, with the guidance's defaults (DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Params:
    # Label matchers (without braces) for the exporter's series and for vLLM's own, e.g. 'namespace="llm"'.
    selector: str = ""
    vllm_selector: str = ""
    # Matches the Prometheus job that scrapes the exporter, for the up/absent guard.
    exporter_job_selector: str = 'job=~".*spec-exporter.*"'
    # Rate window of the recording rules: long enough to smooth one-off requests, short enough to page on.
    rate_window: str = "5m"
    # Window of the acceptance baseline comparison, and how far back the baseline is.
    baseline_window: str = "1h"
    baseline_offset: str = "1w"
    # The exporter window label the alerts read from its windowed gauges.
    exporter_window: str = "5m"
    # Acceptance thresholds: below disable_below speculation is net-negative; below beneficial_at, break-even.
    disable_below: float = 0.5
    beneficial_at: float = 0.65
    # Traffic floors: idle pools and quiet bands carry no signal and must stay silent.
    min_draft_tokens_per_second: float = 5.0
    min_band_draft_tokens_per_second: float = 1.0
    # A drop of more than this much acceptance against the baseline means revisit (e.g. after quantizing).
    acceptance_drop: float = 0.05
    # P99/P50 growing by this factor against the baseline means the tail is paying for the median.
    divergence_growth: float = 1.5
    # Spec pool p99 over the baseline pool's p99 above this, while its p50 is better.
    tail_vs_baseline: float = 1.2
    kv_cache_usage_high: float = 0.9
    for_net_negative: str = "15m"
    for_break_even: str = "30m"
    for_band: str = "15m"
    for_divergence: str = "30m"
    for_drop: str = "30m"
    for_squeeze: str = "10m"
    for_target_down: str = "5m"
    for_missing: str = "10m"
    # Where docs/runbooks.md is published; each alert links to its section. Set it to your copy (the chart does).
    runbook_url: str = "docs/runbooks.md"
    extra_labels: dict[str, str] = field(default_factory=dict)

    def rate_suffix(self, window: str | None = None) -> str:
        return "rate" + (window or self.rate_window)
