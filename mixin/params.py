"""Every threshold, duration, selector and link of the rules and dashboards, with the defaults of the decision
framework in docs/runbooks.md (acceptance 0.5 / 0.65, traffic floors, week-over-week baselines)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Where the project is published; the runbooks are read from there unless `runbook_url` says otherwise.
PROJECT_URL = "https://github.com/spec-exporter/spec-exporter"
RUNBOOKS_PATH = "/blob/main/docs/runbooks.md"
# The overview dashboard's uid (mixin/dashboards.py): alerts link to it by uid, so renaming it breaks no link.
OVERVIEW_UID = "spec-decode-overview"


@dataclass(frozen=True)
class Params:
    # Label matchers (without braces) for the exporter's series and for vLLM's own, e.g. 'namespace="llm"'. Empty
    # `vllm_selector`: vLLM's series whatever their job is called (a PodMonitor, production-stack, llm-d, KServe,
    # a bare-metal scrape_config); set it (e.g. 'job="vllm"') to narrow them.
    selector: str = ""
    vllm_selector: str = ""
    # The exporter's own scrape job, exactly (the chart sets it from its release): a regex over job names breaks
    # under fullnameOverride or a bare-metal job name.
    exporter_job_selector: str = 'job="spec-exporter"'
    # The label a multi-cluster setup (Thanos, Mimir, a central ruler) tells clusters apart by: kept through every
    # aggregation, harmless where series have none.
    cluster_label: str = "cluster"
    # The label(s) naming one vLLM server: `pod` on Kubernetes, e.g. "instance" on bare metal.
    pod_label: str = "pod"
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
    # Finished requests per second below which a model or a pod is too quiet to judge (0.05/s: 15 in 5m).
    min_requests_per_second: float = 0.05
    # A temperature band is judged only with this many requests per second through the tap and this share of the
    # model's requests: one user at T=1.0 at night is neither.
    min_band_requests_per_second: float = 0.05
    min_band_share: float = 0.05
    # A pod whose acceptance is this much (absolute) below its model's fleet ratio is an outlier (a half-rolled
    # bad draft checkpoint, a pod on other hardware).
    outlier_gap: float = 0.15
    # Finished requests per second, now and a week ago, below which a TPOT P99/P50 ratio is too thin to compare:
    # a pool that was a canary (or did not exist) a week ago has no baseline worth paging on.
    min_tpot_requests_per_second: float = 0.1
    # A drop of more than this much acceptance against the baseline means revisit (e.g. after quantizing).
    acceptance_drop: float = 0.05
    # P99/P50 growing by this factor against the baseline means the tail is paying for the median.
    divergence_growth: float = 1.5
    # Spec pool p99 over the baseline pool's p99 above this, while its p50 is better.
    tail_vs_baseline: float = 1.2
    kv_cache_usage_high: float = 0.9
    # Measured TPOT speedup against the baseline pool at the current load band below which speculation is
    # slower (below 1.0 rather than at it: two p50 estimates from histogram buckets are a few percent noisy).
    slower_at_load_below: float = 0.95
    # Requests the speculative pool finished at that band in the exporter window, below which it is too idle.
    min_load_band_requests: float = 20.0
    # How long a fresh target may take to answer its first poll: vLLM loads its model before serving /metrics,
    # and prometheus-operator scrapes pods that are not ready yet. The chart's startupProbe allows 20m.
    startup_budget: str = "20m"
    for_net_negative: str = "15m"
    for_break_even: str = "30m"
    for_band: str = "15m"
    for_divergence: str = "30m"
    for_drop: str = "30m"
    for_squeeze: str = "10m"
    for_target_down: str = "5m"
    for_missing: str = "10m"
    for_outlier: str = "15m"
    # How long an alert keeps firing after its condition was last seen: a scrape gap or a rolling restart
    # (rates over a window with a hole) must not resolve and re-fire it (Prometheus >= 2.42).
    keep_firing_for: str = "10m"
    # SpecDecodeMetricsMissing remembers that a model speculated for as long as some pod serves it (a recording
    # rule that latches), so it fires until speculation is back or it is silenced, through any rollout. The latch
    # survives a gap of this long with no pod of the model scraped; a pool scaled to zero for longer forgets.
    missing_memory: str = "1h"
    for_slower_at_load: str = "15m"
    # SpecDecodeSlowdownAtLoad: the cost model's speedup at the live load (acceptance length / step-cost ratio rho)
    # below this, where rho has evidence at that load (a baseline pool or a calibration profile, never the prior),
    # over at least this many draft tokens in the exporter window.
    slowdown_below: float = 1.0
    min_window_draft_tokens: float = 100.0
    for_slowdown: str = "15m"
    # Where the project is published. The runbook links of alerts and dashboard panels derive from it.
    project_url: str = PROJECT_URL
    # The runbook document itself, to point at your own copy (a fork, a wiki); empty: the project's,
    # project_url + /blob/main/docs/runbooks.md. Each alert and panel links to its section.
    runbook_url: str = ""
    # Grafana's root URL, for the dashboard_url of each alert (Grafana's own default root_url).
    grafana_url: str = "http://localhost:3000"
    extra_labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.runbook_url:
            object.__setattr__(self, "runbook_url", self.project_url.rstrip("/") + RUNBOOKS_PATH)

    def rate_suffix(self, window: str | None = None) -> str:
        return "rate" + (window or self.rate_window)

    def runbook(self, alert: str) -> str:
        """The link to an alert's section of the runbooks (GitHub's anchor for `## Name` is the lower-cased name)."""
        return f"{self.runbook_url}#{alert.lower()}"

    def dashboard(self, uid: str = OVERVIEW_UID) -> str:
        return f"{self.grafana_url.rstrip('/')}/d/{uid}"
