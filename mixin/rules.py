"""Recording and alerting rules as data, rendered from `Params` (pure)."""

from __future__ import annotations

from typing import Any

from mixin.params import Params

BY_MODEL = "namespace, model_name"
BY_BAND = "namespace, model_name, temperature_band"
TPOT = 'metric="tpot"'


def _n(value: float | str) -> str:
    """A number as PromQL writes it; a string passes through (the chart substitutes Helm expressions)."""
    return value if isinstance(value, str) else f"{value:g}"


def _points(fraction: float | str) -> str:
    return fraction if isinstance(fraction, str) else f"{fraction * 100:g}"


def _sel(matchers: str, *extra: str) -> str:
    parts = [m for m in (matchers, *extra) if m]
    return "{" + ",".join(parts) + "}" if parts else ""


def names(p: Params) -> dict[str, str]:
    """Recording-rule names, `level:metric:operations`, for the configured windows."""
    w, b = p.rate_suffix(), p.rate_suffix(p.baseline_window)
    return {
        "draft_rate": f"model_name:spec_decode_draft_tokens:{w}",
        "accepted_rate": f"model_name:spec_decode_accepted_tokens:{w}",
        "acceptance": f"model_name:spec_decode_draft_acceptance:ratio_{w}",
        "draft_rate_baseline": f"model_name:spec_decode_draft_tokens:{b}",
        "acceptance_baseline": f"model_name:spec_decode_draft_acceptance:ratio_{b}",
        "band_draft_rate": f"model_name_temperature_band:spec_decode_request_draft_tokens:{w}",
        "band_accepted_rate": f"model_name_temperature_band:spec_decode_request_accepted_tokens:{w}",
        "band_acceptance": f"model_name_temperature_band:spec_decode_request_acceptance:ratio_{w}",
        "band_p10": f"model_name_temperature_band:spec_decode_request_acceptance_rate:p10_{w}",
        "band_p50": f"model_name_temperature_band:spec_decode_request_acceptance_rate:p50_{w}",
        "band_p90": f"model_name_temperature_band:spec_decode_request_acceptance_rate:p90_{w}",
        "ttft_p50": f"model_name:vllm_time_to_first_token_seconds:p50_{w}",
        "ttft_p99": f"model_name:vllm_time_to_first_token_seconds:p99_{w}",
        "ttft_ratio": f"model_name:vllm_time_to_first_token_seconds:p99_over_p50_{w}",
        "tpot_p50": f"model_name:vllm_request_time_per_output_token_seconds:p50_{w}",
        "tpot_p99": f"model_name:vllm_request_time_per_output_token_seconds:p99_{w}",
        "tpot_ratio": f"model_name:vllm_request_time_per_output_token_seconds:p99_over_p50_{w}",
        "tpot_requests": f"model_name:vllm_request_time_per_output_token_seconds:count_{w}",
    }


def recording_rules(p: Params) -> list[dict[str, Any]]:
    n = names(p)
    s = _sel(p.selector)
    w, bw = p.rate_window, p.baseline_window

    def rate_sum(metric: str, by: str, window: str = w, sel: str = s) -> str:
        return f"sum by ({by}) (rate({metric}{sel}[{window}]))"

    def quantile(q: float, metric: str, by: str, sel: str) -> str:
        return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{sel}[{w}])))"

    rules: list[tuple[str, str]] = [
        # Acceptance from the counter halves: a ratio of sums, never an average of ratios.
        (n["draft_rate"], rate_sum("spec_decode_draft_tokens_total", BY_MODEL)),
        (n["accepted_rate"], rate_sum("spec_decode_accepted_tokens_total", BY_MODEL)),
        (n["acceptance"], f"{n['accepted_rate']} / ({n['draft_rate']} > 0)"),
        (n["draft_rate_baseline"], rate_sum("spec_decode_draft_tokens_total", BY_MODEL, bw)),
        (
            n["acceptance_baseline"],
            f"{rate_sum('spec_decode_accepted_tokens_total', BY_MODEL, bw)} / ({n['draft_rate_baseline']} > 0)",
        ),
        # Per temperature band, from the tap's per-request counters and histogram.
        (n["band_draft_rate"], rate_sum("spec_decode_request_draft_tokens_total", BY_BAND)),
        (n["band_accepted_rate"], rate_sum("spec_decode_request_accepted_tokens_total", BY_BAND)),
        (n["band_acceptance"], f"{n['band_accepted_rate']} / ({n['band_draft_rate']} > 0)"),
        (n["band_p10"], quantile(0.1, "spec_decode_request_acceptance_rate", BY_BAND, s)),
        (n["band_p50"], quantile(0.5, "spec_decode_request_acceptance_rate", BY_BAND, s)),
        (n["band_p90"], quantile(0.9, "spec_decode_request_acceptance_rate", BY_BAND, s)),
    ]
    for key, family in (
        ("ttft", "vllm:time_to_first_token_seconds"),
        ("tpot", "vllm:request_time_per_output_token_seconds"),
    ):
        bucket = _vllm(family + "_bucket", p.vllm_selector)
        for q in ("p50", "p99"):
            qv = 0.5 if q == "p50" else 0.99
            rules.append((n[f"{key}_{q}"], f"histogram_quantile({qv}, sum by (le, {BY_MODEL}) (rate({bucket}[{w}])))"))
        rules.append((n[f"{key}_ratio"], f"{n[f'{key}_p99']} / ({n[f'{key}_p50']} > 0)"))
    tpot_count = _vllm("vllm:request_time_per_output_token_seconds_count", p.vllm_selector)
    rules.append(
        (
            n["tpot_requests"],
            f"sum by ({BY_MODEL}) (rate({tpot_count}[{w}]))",
        )
    )
    return [{"record": name, "expr": expr} for name, expr in rules]


def _vllm(metric: str, selector: str) -> str:
    # vLLM's names contain colons, which are legal in a selector but read better quoted.
    return "{" + ",".join([f'__name__="{metric}"', *([selector] if selector else [])]) + "}"


def _dashboard_url(p: Params, variables: tuple[str, ...]) -> str:
    """The overview dashboard, its variables set from the alert's labels (an absent label selects series without
    it, which is what the alert saw)."""
    query = "&".join(f"var-{v}={{{{ $labels.{v} | urlquery }}}}" for v in variables)
    return p.dashboard() + (f"?{query}" if query else "")


def _alert(
    p: Params,
    name: str,
    expr: str,
    for_: str,
    severity: str,
    summary: str,
    description: str,
    variables: tuple[str, ...] = ("namespace", "model_name"),
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, **p.extra_labels},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": p.runbook(name),
            "dashboard_url": _dashboard_url(p, variables),
        },
    }


def alerting_rules(p: Params) -> list[dict[str, Any]]:
    n = names(p)
    s = _sel(p.selector)
    floor = f"{n['draft_rate']} > {_n(p.min_draft_tokens_per_second)}"
    model = "{{ $labels.model_name }}"
    ns = "{{ $labels.namespace }}"
    value = "{{ $value | humanizePercentage }}"
    exporter_window = f'window="{p.exporter_window}"'
    target_up = f"spec_decode_exporter_target_up{s}"
    week = p.baseline_offset
    return [
        _alert(
            p,
            "SpecDecodeNetNegative",
            f"({n['acceptance']} < {_n(p.disable_below)}) and on ({BY_MODEL}) ({floor})",
            p.for_net_negative,
            "warning",
            "Speculative decoding is slowing {{ $labels.model_name }} down.",
            f"Draft acceptance for {model} in {ns} is {value}, below {_n(p.disable_below)}: every verification step "
            "wastes target-model work and speculative decoding is net-negative. Turn it off for this traffic or "
            "fix the draft.",
        ),
        _alert(
            p,
            "SpecDecodeNearBreakEven",
            f"({n['acceptance']} >= {_n(p.disable_below)} < {_n(p.beneficial_at)}) and on ({BY_MODEL}) ({floor})",
            p.for_break_even,
            "info",
            "Speculative decoding on {{ $labels.model_name }} is near break-even.",
            f"Draft acceptance for {model} in {ns} is {value}, between {_n(p.disable_below)} and "
            f"{_n(p.beneficial_at)}: the gain is marginal. Measure P99 against a pool without speculative decoding "
            "before deciding.",
        ),
        _alert(
            p,
            "SpecDecodeTemperatureBandNetNegative",
            f"({n['band_acceptance']} < {_n(p.disable_below)})"
            f" and on ({BY_BAND}) ({n['band_draft_rate']} > {_n(p.min_band_draft_tokens_per_second)})"
            f" and on ({BY_MODEL}) ({n['acceptance']} >= {_n(p.disable_below)})",
            p.for_band,
            "warning",
            "Temperature band {{ $labels.temperature_band }} of {{ $labels.model_name }} accepts too few drafts.",
            f"Requests to {model} in {ns} at temperature {{{{ $labels.temperature_band }}}} accept {value} of "
            f"their drafts, below {_n(p.disable_below)}, while the model's average still looks healthy: this slice "
            "adds tail latency to every batch it shares. Route it to a pool without speculative decoding.",
            ("namespace", "model_name", "temperature_band"),
        ),
        _alert(
            p,
            "SpecDecodeTailDivergenceWidening",
            # vLLM's histogram exists with or without speculation: only pools that speculate are this alert's
            # business, and only with traffic now and a week ago (a canary then has no baseline worth paging on).
            f"({n['tpot_ratio']} / ({n['tpot_ratio']} offset {week}) > {_n(p.divergence_growth)})"
            f" and on ({BY_MODEL}) ({n['tpot_requests']} > {_n(p.min_tpot_requests_per_second)})"
            f" and on ({BY_MODEL}) ({n['tpot_requests']} offset {week} > {_n(p.min_tpot_requests_per_second)})"
            f" and on ({BY_MODEL}) (spec_decode_enabled{s} == 1)",
            p.for_divergence,
            "warning",
            "TPOT P99/P50 divergence of {{ $labels.model_name }} is widening.",
            f"The TPOT P99/P50 ratio of {model} in {ns} is {{{{ $value | humanize }}}}x what it was "
            f"{week} ago: the median may have improved while the tail regressed. Compare against a "
            "pool without speculative decoding. After a deliberate change, silence it for the "
            f"{week} the baseline takes to catch up (see the runbook).",
        ),
        _alert(
            p,
            "SpecDecodeTailWorseThanBaseline",
            f"(spec_decode_baseline_p99_latency_ratio{_sel(p.selector, exporter_window, TPOT)}"
            f" > {_n(p.tail_vs_baseline)}) and on (target, baseline, window)"
            f" (spec_decode_baseline_tpot_speedup_ratio{_sel(p.selector, exporter_window)} > 1)",
            p.for_divergence,
            "warning",
            "{{ $labels.target }}: median faster, tail slower than the baseline pool.",
            "TPOT p99 on {{ $labels.target }} is {{ $value | humanize }}x that of the baseline pool "
            "{{ $labels.baseline }} while its p50 is better: the mixed-workload signature. Check acceptance by "
            "temperature band.",
            ("namespace", "pod"),
        ),
        _alert(
            p,
            "SpecDecodeSlowerThanBaselineAtLoad",
            # The band the target is in now (per engine, from spec_decode_load_band_info) picks which of the
            # per-band comparisons counts; the request floor keeps a band the pool only passed through quiet.
            f"((spec_decode_baseline_load_band_tpot_speedup{_sel(p.selector, exporter_window)}"
            f" < {_n(p.slower_at_load_below)})"
            " and ignoring (model_name, engine, baseline, window)"
            f" (spec_decode_load_band_info{s} == 1))"
            f" and (spec_decode_baseline_load_band_requests{_sel(p.selector, exporter_window)}"
            f" > {_n(p.min_load_band_requests)})",
            p.for_slower_at_load,
            "warning",
            "{{ $labels.target }} is slower than its baseline pool at {{ $labels.load_band }} running requests.",
            "At the load {{ $labels.target }} runs at now ({{ $labels.load_band }} running requests per engine), "
            'its TPOT speedup over the baseline pool {{ $labels.baseline }} is {{ printf "%.2f" $value }}x (below '
            f"{_n(p.slower_at_load_below)}): speculative decoding costs more than it saves at this batch size. "
            "Turn it off for this range with speculative_config.num_speculative_tokens_per_batch_size.",
            ("namespace", "pod"),
        ),
        _alert(
            p,
            "SpecDecodeAcceptanceDropped",
            f"(({n['acceptance_baseline']} offset {week}) - {n['acceptance_baseline']}"
            f" > {_n(p.acceptance_drop)})"
            f" and on ({BY_MODEL}) ({n['draft_rate_baseline']} > {_n(p.min_draft_tokens_per_second)})"
            f" and on ({BY_MODEL}) ({n['draft_rate_baseline']} offset {week}"
            f" > {_n(p.min_draft_tokens_per_second)})",
            p.for_drop,
            "warning",
            "Draft acceptance of {{ $labels.model_name }} dropped against its baseline.",
            f"Acceptance for {model} in {ns} is {{{{ $value | humanizePercentage }}}} lower than "
            f"{week} ago (more than {_points(p.acceptance_drop)} points). A changed target (e.g. "
            "quantized), draft or traffic mix: revisit the configuration. After a deliberate change, silence it for "
            f"the {week} the baseline takes to catch up (see the runbook).",
        ),
        _alert(
            p,
            "SpecDecodeKVCacheSqueeze",
            f"(max by (namespace, target, model_name, engine) (spec_decode_kv_cache_usage_ratio{s})"
            f" > {_n(p.kv_cache_usage_high)})"
            f" and on (namespace, target, model_name, engine)"
            f" (spec_decode_preemptions_per_second{_sel(p.selector, exporter_window)} > 0)"
            f" and on (namespace, target, model_name, engine) (spec_decode_enabled{s} == 1)",
            p.for_squeeze,
            "warning",
            "KV cache of {{ $labels.target }} is full and preempting with speculative decoding on.",
            "KV-cache usage on {{ $labels.target }} ({{ $labels.model_name }}, engine {{ $labels.engine }}) is "
            "{{ $value | humanizePercentage }} and requests are being preempted. The draft model's weights and "
            "KV come out of the same budget: consider a smaller draft, fewer speculative tokens, or more memory.",
            ("namespace", "model_name", "engine"),
        ),
        _alert(
            p,
            "SpecDecodeExporterTargetDown",
            # Down now, and either it answered within the start-up budget (a serving vLLM stopped) or the series
            # is older than the budget (a start that never finished). A cold start inside the budget is neither:
            # vLLM serves no /metrics while it loads its model, and not-ready pods are scraped all the same.
            f"({target_up} == 0)"
            f" and ((max_over_time({target_up}[{p.startup_budget}]) == 1)"
            f" or ({target_up} offset {p.startup_budget}))",
            p.for_target_down,
            "warning",
            "spec_exporter cannot read vLLM metrics from {{ $labels.target }}.",
            "The exporter's polls of {{ $labels.target }} have failed for "
            f"{p.for_target_down} after it had answered, or it has not answered since the exporter started more than "
            f"{p.startup_budget} ago (the start-up budget); see spec_decode_exporter_poll_errors_total for the reason. "
            "Speculative-decoding health for it is unknown.",
            ("namespace", "pod"),
        ),
        _alert(
            p,
            "SpecDecodeExporterDown",
            f"up{_sel(p.exporter_job_selector)} == 0 or absent(up{_sel(p.exporter_job_selector)})",
            p.for_target_down,
            "warning",
            "spec_exporter is not being scraped.",
            "Prometheus has no successful scrape of spec_exporter: none of the speculative-decoding alerts can fire.",
            # absent() carries no labels, and an empty variable would select nothing: the whole dashboard.
            (),
        ),
        _alert(
            p,
            "SpecDecodeMetricsMissing",
            # Only a target the exporter still reads (its target_up series is here and 1) can be said to have
            # lost its spec series: a pod that went away (rollout, reschedule, scale-down) takes its target_up
            # along. A target that still speculates under another model or engine label is no loss either.
            f"((max_over_time(spec_decode_enabled{s}[6h]) == 1)"
            f" unless ignoring (model_name, engine) (spec_decode_enabled{s} == 1))"
            f" and ignoring (model_name, engine) ({target_up} == 1)",
            p.for_missing,
            "warning",
            "{{ $labels.target }} stopped exposing speculative-decoding metrics.",
            "{{ $labels.target }} ({{ $labels.model_name }}) exposed vllm:spec_decode_* series in the last 6h and no "
            "longer does, while the exporter still reads it: speculative decoding was turned off or the metrics "
            "were lost in an upgrade.",
            ("namespace", "pod", "model_name"),
        ),
        _alert(
            p,
            "SpecDecodeTapWithoutPerRequestMetrics",
            f"spec_decode_tap_per_request_metrics_missing{s} == 1",
            p.for_missing,
            "info",
            "The tap cannot measure acceptance by temperature on {{ $labels.target }}.",
            "vLLM behind the tap on {{ $labels.target }} answers without per-request speculative-decoding metrics. "
            "Start it with --per-request-spec-decode-metrics summary (vLLM >= 0.29).",
            ("namespace", "pod"),
        ),
    ]


def rule_groups(p: Params) -> dict[str, Any]:
    return {
        "recording": {"groups": [{"name": "spec-decode.rules", "rules": recording_rules(p)}]},
        "alerting": {"groups": [{"name": "spec-decode.alerts", "rules": alerting_rules(p)}]},
    }
