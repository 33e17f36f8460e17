"""Recording and alerting rules as data, rendered from `Params` (pure), in two layers.

- The base layer reads what Prometheus already scrapes from every vLLM pod: vLLM's own series (`vllm:*`, the colons
  are vLLM's) and the middleware tap's `spec_tap_*` families on the same /metrics. It needs no sidecar.
- The exporter layer reads spec_exporter's `spec_decode_*` series: verdicts, the cost model, load bands, baseline
  comparisons, the exporter's health. Its copies of the base layer's acceptance alerts (for an exporter whose vLLM
  Prometheus does not scrape, or a proxy tap) yield to the base layer wherever its recording rules have data, so
  with both layers installed no alert fires twice.

Per-pod conditions are evaluated per pod and carry `namespace` and the pod label; fleet numbers per model are
ratios of sums across pods, and percentiles `histogram_quantile` over `sum by (le, ...)`; the cluster label survives
every aggregation.
"""

from __future__ import annotations

from typing import Any

from mixin.params import Params

BASE = "base"
EXPORTER = "exporter"
LAYERS = (BASE, EXPORTER)
TPOT = 'metric="tpot"'
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
# vLLM's latency histograms the fleet percentiles are taken over.
LATENCY = {
    "ttft": "vllm:time_to_first_token_seconds",
    "tpot": "vllm:request_time_per_output_token_seconds",
    "itl": "vllm:inter_token_latency_seconds",
}


def _n(value: float | str) -> str:
    """A number as PromQL writes it; a string passes through (the chart substitutes Helm expressions)."""
    return value if isinstance(value, str) else f"{value:g}"


def _points(fraction: float | str) -> str:
    return fraction if isinstance(fraction, str) else f"{fraction * 100:g}"


def _sel(matchers: str, *extra: str) -> str:
    parts = [m for m in (matchers, *extra) if m]
    return "{" + ",".join(parts) + "}" if parts else ""


def _vllm(metric: str, selector: str) -> str:
    # vLLM's names contain colons, which are legal in a selector but read better quoted.
    return "{" + ",".join([f'__name__="{metric}"', *([selector] if selector else [])]) + "}"


class By:
    """The label sets of the aggregations: the cluster label everywhere, the pod label where per pod."""

    def __init__(self, p: Params) -> None:
        c = p.cluster_label
        self.model = f"{c}, namespace, model_name"
        self.pod = f"{c}, namespace, {p.pod_label}, model_name"
        self.engine = f"{self.pod}, engine"
        self.band = f"{self.model}, temperature_band"
        # Per request class (the tap's `workload`): which workload pays, within each band.
        self.workload = f"{self.model}, workload, temperature_band"
        self.position = f"{self.model}, position"
        # The exporter's series: in sidecar mode `pod` is vLLM's pod; a central exporter tells targets apart.
        self.exporter_engine = f"{c}, namespace, {p.pod_label}, target, model_name, engine"


def names(p: Params) -> dict[str, str]:
    """Recording-rule names, `level:metric:operations`, for the configured windows (both layers)."""
    w, b = p.rate_suffix(), p.rate_suffix(p.baseline_window)
    n = {
        # Base layer, per pod.
        "pod_draft_rate": f"pod:vllm_spec_decode_draft_tokens:{w}",
        "pod_accepted_rate": f"pod:vllm_spec_decode_accepted_tokens:{w}",
        "pod_drafts_rate": f"pod:vllm_spec_decode_drafts:{w}",
        "pod_acceptance": f"pod:vllm_spec_decode_acceptance:ratio_{w}",
        "pod_length": f"pod:vllm_spec_decode_acceptance_length:ratio_{w}",
        "pod_requests": f"pod:vllm_requests:{w}",
        "pod_tpot_p99": f"pod:vllm_request_time_per_output_token_seconds:p99_{w}",
        "pod_kv_usage": "pod_engine:vllm_kv_cache_usage:ratio",
        "pod_preemptions": f"pod_engine:vllm_preemptions:{w}",
        # Base layer, per model: sums of the pods'.
        "vllm_draft_rate": f"model_name:vllm_spec_decode_draft_tokens:{w}",
        "vllm_accepted_rate": f"model_name:vllm_spec_decode_accepted_tokens:{w}",
        "vllm_drafts_rate": f"model_name:vllm_spec_decode_drafts:{w}",
        "vllm_acceptance": f"model_name:vllm_spec_decode_acceptance:ratio_{w}",
        "vllm_length": f"model_name:vllm_spec_decode_acceptance_length:ratio_{w}",
        "vllm_position": f"model_name_position:vllm_spec_decode_position_acceptance:ratio_{w}",
        "vllm_requests": f"model_name:vllm_requests:{w}",
        "vllm_draft_rate_baseline": f"model_name:vllm_spec_decode_draft_tokens:{b}",
        "vllm_acceptance_baseline": f"model_name:vllm_spec_decode_acceptance:ratio_{b}",
        "vllm_speculated": "model_name:vllm_spec_decode:speculated",
        # Base layer, per temperature band, from the middleware's spec_tap_* on vLLM's /metrics.
        "tap_draft_rate": f"model_name_temperature_band:spec_tap_draft_tokens:{w}",
        "tap_accepted_rate": f"model_name_temperature_band:spec_tap_accepted_tokens:{w}",
        "tap_acceptance": f"model_name_temperature_band:spec_tap_acceptance:ratio_{w}",
        "tap_requests": f"model_name_temperature_band:spec_tap_requests:{w}",
        "workload_draft_rate": f"model_name_workload_temperature_band:spec_tap_draft_tokens:{w}",
        "workload_accepted_rate": f"model_name_workload_temperature_band:spec_tap_accepted_tokens:{w}",
        "workload_acceptance": f"model_name_workload_temperature_band:spec_tap_acceptance:ratio_{w}",
        "tap_share": f"model_name_temperature_band:spec_tap_requests:share_{w}",
        "tap_buckets": f"model_name_temperature_band_le:spec_tap_request_acceptance_rate_bucket:{w}",
        "tap_p10": f"model_name_temperature_band:spec_tap_request_acceptance_rate:p10_{w}",
        "tap_p50": f"model_name_temperature_band:spec_tap_request_acceptance_rate:p50_{w}",
        "tap_p90": f"model_name_temperature_band:spec_tap_request_acceptance_rate:p90_{w}",
        "ttft_ratio": f"model_name:vllm_time_to_first_token_seconds:p99_over_p50_{w}",
        "tpot_ratio": f"model_name:vllm_request_time_per_output_token_seconds:p99_over_p50_{w}",
        "tpot_requests": f"model_name:vllm_request_time_per_output_token_seconds:count_{w}",
        # Exporter layer.
        "draft_rate": f"model_name:spec_decode_draft_tokens:{w}",
        "accepted_rate": f"model_name:spec_decode_accepted_tokens:{w}",
        "acceptance": f"model_name:spec_decode_draft_acceptance:ratio_{w}",
        "draft_rate_baseline": f"model_name:spec_decode_draft_tokens:{b}",
        "acceptance_baseline": f"model_name:spec_decode_draft_acceptance:ratio_{b}",
        "band_draft_rate": f"model_name_temperature_band:spec_decode_request_draft_tokens:{w}",
        "band_accepted_rate": f"model_name_temperature_band:spec_decode_request_accepted_tokens:{w}",
        "band_acceptance": f"model_name_temperature_band:spec_decode_request_acceptance:ratio_{w}",
        "speculated": "model_name:spec_decode_enabled:speculated",
    }
    for key, family in LATENCY.items():
        metric = family.removeprefix("vllm:")
        n[f"{key}_buckets"] = f"model_name_le:vllm_{metric}_bucket:{w}"
        for q in QUANTILES:
            n[f"{key}_{q}"] = f"model_name:vllm_{metric}:{q}_{w}"
    return n


def _record(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"record": name, "expr": expr} for name, expr in pairs]


def _speculated_latch(record: str, by: str, speculating: str, served: str, memory: str) -> str:
    """A recording rule that remembers a model speculated while some pod of it is still served (it reads its own
    previous value): SpecDecodeMetricsMissing then fires until speculation is back, through any rollout, and a
    pool that went away (scaled to zero) forgets it."""
    return (
        f"group by ({by}) ({speculating})"
        f" or ({record} and on ({by}) group by ({by}) (max_over_time({served}[{memory}])))"
    )


def base_recording_rules(p: Params) -> list[dict[str, Any]]:
    n, by, v = names(p), By(p), p.vllm_selector
    w, bw = p.rate_window, p.baseline_window

    def rate(metric: str, group: str, window: str = w) -> str:
        return f"sum by ({group}) (rate({_vllm(metric, v)}[{window}]))"

    def quantile(q: float, bucket: str, group: str) -> str:
        return f"histogram_quantile({q}, sum by (le, {group}) (rate({_vllm(bucket, v)}[{w}])))"

    def model_sum(pod_record: str) -> str:
        return f"sum by ({by.model}) ({pod_record})"

    rules = [
        # Per pod first: each pod's halves, then the model's as sums of them (a ratio of sums, never an average of
        # ratios), so a bad pod is both visible on its own and weighted by its traffic in the fleet number.
        (n["pod_draft_rate"], rate("vllm:spec_decode_num_draft_tokens_total", by.pod)),
        (n["pod_accepted_rate"], rate("vllm:spec_decode_num_accepted_tokens_total", by.pod)),
        (n["pod_drafts_rate"], rate("vllm:spec_decode_num_drafts_total", by.pod)),
        (n["pod_acceptance"], f"{n['pod_accepted_rate']} / ({n['pod_draft_rate']} > 0)"),
        (n["pod_length"], f"1 + {n['pod_accepted_rate']} / ({n['pod_drafts_rate']} > 0)"),
        (n["pod_requests"], rate("vllm:request_success_total", by.pod)),
        (n["pod_tpot_p99"], quantile(0.99, LATENCY["tpot"] + "_bucket", by.pod)),
        # Per engine: the cache that is full and the engine that preempts must be the same one.
        (
            n["pod_kv_usage"],
            # vLLM renamed it; older servers in the fleet still expose the old name.
            f"max by ({by.engine}) ({_vllm('vllm:kv_cache_usage_perc', v)} or {_vllm('vllm:gpu_cache_usage_perc', v)})",
        ),
        (n["pod_preemptions"], rate("vllm:num_preemptions_total", by.engine)),
        (n["vllm_draft_rate"], model_sum(n["pod_draft_rate"])),
        (n["vllm_accepted_rate"], model_sum(n["pod_accepted_rate"])),
        (n["vllm_drafts_rate"], model_sum(n["pod_drafts_rate"])),
        (n["vllm_acceptance"], f"{n['vllm_accepted_rate']} / ({n['vllm_draft_rate']} > 0)"),
        (n["vllm_length"], f"1 + {n['vllm_accepted_rate']} / ({n['vllm_drafts_rate']} > 0)"),
        (
            n["vllm_position"],
            f"{rate('vllm:spec_decode_num_accepted_tokens_per_pos_total', by.position)}"
            f" / on ({by.model}) group_left () ({n['vllm_drafts_rate']} > 0)",
        ),
        (n["vllm_requests"], model_sum(n["pod_requests"])),
        (n["vllm_draft_rate_baseline"], rate("vllm:spec_decode_num_draft_tokens_total", by.model, bw)),
        (
            n["vllm_acceptance_baseline"],
            f"{rate('vllm:spec_decode_num_accepted_tokens_total', by.model, bw)}"
            f" / ({n['vllm_draft_rate_baseline']} > 0)",
        ),
        (
            n["vllm_speculated"],
            _speculated_latch(
                n["vllm_speculated"],
                by.model,
                _vllm("vllm:spec_decode_num_drafts_total", v),
                _vllm("vllm:num_requests_running", v),
                p.missing_memory,
            ),
        ),
        # Per temperature band, from the middleware's families on vLLM's own /metrics. The per-band percentiles
        # are computed here, once, from the tap's fine-bucket histogram (0.025 wide); dashboards read these.
        (n["tap_draft_rate"], rate("spec_tap_draft_tokens_total", by.band)),
        (n["tap_accepted_rate"], rate("spec_tap_accepted_tokens_total", by.band)),
        (n["tap_acceptance"], f"{n['tap_accepted_rate']} / ({n['tap_draft_rate']} > 0)"),
        (n["tap_requests"], rate("spec_tap_requests_total", by.band)),
        (n["workload_draft_rate"], rate("spec_tap_draft_tokens_total", by.workload)),
        (n["workload_accepted_rate"], rate("spec_tap_accepted_tokens_total", by.workload)),
        (n["workload_acceptance"], f"{n['workload_accepted_rate']} / ({n['workload_draft_rate']} > 0)"),
        (
            n["tap_share"],
            f"{n['tap_requests']} / on ({by.model}) group_left () (sum by ({by.model}) ({n['tap_requests']}) > 0)",
        ),
    ]
    # Each histogram's buckets are summed across pods once (the expensive part at fleet scale), and every quantile
    # is taken from that record.
    tap_buckets = n["tap_buckets"]
    rules.append((tap_buckets, rate("spec_tap_request_acceptance_rate_bucket", f"le, {by.band}")))
    for key, q in (("tap_p10", 0.1), ("tap_p50", 0.5), ("tap_p90", 0.9)):
        rules.append((n[key], f"histogram_quantile({q}, {tap_buckets})"))
    # Fleet latency percentiles per model: histogram_quantile over the pods' summed buckets, not a max of
    # per-pod quantiles (the worst pod's p50 is not the fleet's).
    for key, family in LATENCY.items():
        buckets = n[f"{key}_buckets"]
        rules.append((buckets, rate(family + "_bucket", f"le, {by.model}")))
        for q, qv in QUANTILES.items():
            rules.append((n[f"{key}_{q}"], f"histogram_quantile({qv}, {buckets})"))
    for key in ("ttft", "tpot"):
        rules.append((n[f"{key}_ratio"], f"{n[f'{key}_p99']} / ({n[f'{key}_p50']} > 0)"))
    rules.append((n["tpot_requests"], rate(LATENCY["tpot"] + "_count", by.model)))
    return _record(rules)


def exporter_recording_rules(p: Params) -> list[dict[str, Any]]:
    n, by, s = names(p), By(p), _sel(p.selector)
    w, bw = p.rate_window, p.baseline_window

    def rate_sum(metric: str, group: str, window: str = w) -> str:
        return f"sum by ({group}) (rate({metric}{s}[{window}]))"

    rules: list[tuple[str, str]] = [
        (n["draft_rate"], rate_sum("spec_decode_draft_tokens_total", by.model)),
        (n["accepted_rate"], rate_sum("spec_decode_accepted_tokens_total", by.model)),
        (n["acceptance"], f"{n['accepted_rate']} / ({n['draft_rate']} > 0)"),
        (n["draft_rate_baseline"], rate_sum("spec_decode_draft_tokens_total", by.model, bw)),
        (
            n["acceptance_baseline"],
            f"{rate_sum('spec_decode_accepted_tokens_total', by.model, bw)} / ({n['draft_rate_baseline']} > 0)",
        ),
        (n["band_draft_rate"], rate_sum("spec_decode_request_draft_tokens_total", by.band)),
        (n["band_accepted_rate"], rate_sum("spec_decode_request_accepted_tokens_total", by.band)),
        (n["band_acceptance"], f"{n['band_accepted_rate']} / ({n['band_draft_rate']} > 0)"),
        (
            n["speculated"],
            _speculated_latch(
                n["speculated"],
                by.model,
                f"spec_decode_enabled{s} == 1",
                f"spec_decode_enabled{s}",
                p.missing_memory,
            ),
        ),
        # The cost model of issue 17 records here (e.g. spec_decode_step_cost_ratio{source} per pod and model).
    ]
    return _record(rules)


def _dashboard_url(p: Params, variables: tuple[str, ...]) -> str:
    """The overview dashboard, its variables set from the alert's labels (an absent label selects series without
    it, which is what the alert saw)."""
    query = "&".join(f"var-{v}={{{{ $labels.{v} | urlquery }}}}" for v in variables)
    return p.dashboard() + (f"?{query}" if query else "")


def _alert(
    p: Params,
    layer: str,
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
        "keep_firing_for": p.keep_firing_for,
        # Which layer raised it: the exporter layer's copies of base alerts yield to the base layer, but the two
        # rule groups evaluate independently, so for one evaluation at start-up both may be pending; distinct
        # label sets keep their ALERTS series apart (only `for` decides what fires, and it fires once).
        "labels": {"severity": severity, "layer": layer, **p.extra_labels},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": p.runbook(name),
            "dashboard_url": _dashboard_url(p, variables),
        },
    }


MODEL = "{{ $labels.model_name }}"
# A step-cost ratio with evidence at the live load (derive/cost.py's sources), not the prior that ignores load.
EVIDENCE = 'source=~"baseline|calibration"'
NS = "{{ $labels.namespace }}"


def _pod(p: Params) -> str:
    """The pod's name in an annotation: the label the rules group pods by (`instance` on bare metal)."""
    return f"{{{{ $labels.{p.pod_label} }}}}"


PERCENT = "{{ $value | humanizePercentage }}"


def _net_negative(p: Params, layer: str, expr: str) -> dict[str, Any]:
    return _alert(
        p,
        layer,
        "SpecDecodeNetNegative",
        expr,
        p.for_net_negative,
        "warning",
        "Speculative decoding is slowing {{ $labels.model_name }} down.",
        f"Draft acceptance for {MODEL} in {NS} is {PERCENT}, below {_n(p.disable_below)}: every verification step "
        "wastes target-model work and speculative decoding is net-negative. Turn it off for this traffic or "
        "fix the draft.",
    )


def _near_break_even(p: Params, layer: str, expr: str) -> dict[str, Any]:
    return _alert(
        p,
        layer,
        "SpecDecodeNearBreakEven",
        expr,
        p.for_break_even,
        "info",
        "Speculative decoding on {{ $labels.model_name }} is near break-even.",
        f"Draft acceptance for {MODEL} in {NS} is {PERCENT}, between {_n(p.disable_below)} and "
        f"{_n(p.beneficial_at)}: the gain is marginal. Measure P99 against a pool without speculative decoding "
        "before deciding.",
    )


def _band(p: Params, layer: str, expr: str) -> dict[str, Any]:
    return _alert(
        p,
        layer,
        "SpecDecodeTemperatureBandNetNegative",
        expr,
        p.for_band,
        "warning",
        "Temperature band {{ $labels.temperature_band }} of {{ $labels.model_name }} accepts too few drafts.",
        f"Requests to {MODEL} in {NS} at temperature {{{{ $labels.temperature_band }}}} accept {PERCENT} of "
        f"their drafts, below {_n(p.disable_below)}, while the model's average still looks healthy: this slice "
        "adds tail latency to every batch it shares. Route it to a pool without speculative decoding.",
        ("namespace", "model_name", "temperature_band"),
    )


def _dropped(p: Params, layer: str, expr: str) -> dict[str, Any]:
    week = p.baseline_offset
    return _alert(
        p,
        layer,
        "SpecDecodeAcceptanceDropped",
        expr,
        p.for_drop,
        "warning",
        "Draft acceptance of {{ $labels.model_name }} dropped against its baseline.",
        f"Acceptance for {MODEL} in {NS} is {PERCENT} lower than "
        f"{week} ago (more than {_points(p.acceptance_drop)} points). A changed target (e.g. "
        "quantized), draft or traffic mix: revisit the configuration. After a deliberate change, silence it for "
        f"the {week} the baseline takes to catch up (see the runbook).",
    )


def _squeeze(p: Params, layer: str, expr: str) -> dict[str, Any]:
    return _alert(
        p,
        layer,
        "SpecDecodeKVCacheSqueeze",
        expr,
        p.for_squeeze,
        "warning",
        f"KV cache of {_pod(p)} is full and preempting with speculative decoding on.",
        f"KV-cache usage on {_pod(p)} in {NS} ({MODEL}, engine {{{{ $labels.engine }}}}) is {PERCENT} and the same "
        "engine is preempting requests. The draft model's weights and KV come out of the same budget: consider a "
        "smaller draft, fewer speculative tokens, or more memory.",
        ("namespace", "pod", "model_name", "engine"),
    )


def _missing(p: Params, layer: str, expr: str) -> dict[str, Any]:
    return _alert(
        p,
        layer,
        "SpecDecodeMetricsMissing",
        expr,
        p.for_missing,
        "warning",
        "{{ $labels.model_name }} in {{ $labels.namespace }} stopped exposing speculative-decoding metrics.",
        f"{MODEL} in {NS} exposed vllm:spec_decode_* series and no pod serving it does now: speculative decoding "
        "was turned off or the metrics were lost in an upgrade. This fires until speculation is back or the alert "
        "is silenced; if it was turned off on purpose, silence it (see the runbook).",
    )


def base_alerting_rules(p: Params) -> list[dict[str, Any]]:
    n, by, v = names(p), By(p), p.vllm_selector
    week = p.baseline_offset
    model_floor = (
        f" and on ({by.model}) ({n['vllm_draft_rate']} > {_n(p.min_draft_tokens_per_second)})"
        f" and on ({by.model}) ({n['vllm_requests']} > {_n(p.min_requests_per_second)})"
    )
    return [
        _net_negative(p, BASE, f"({n['vllm_acceptance']} < {_n(p.disable_below)})" + model_floor),
        _near_break_even(
            p, BASE, f"({n['vllm_acceptance']} >= {_n(p.disable_below)} < {_n(p.beneficial_at)})" + model_floor
        ),
        _band(
            p,
            BASE,
            # Floors in requests and in share of the model's traffic through the tap: one hot user at night has
            # plenty of draft tokens a second and neither.
            f"({n['tap_acceptance']} < {_n(p.disable_below)})"
            f" and on ({by.band}) ({n['tap_requests']} > {_n(p.min_band_requests_per_second)})"
            f" and on ({by.band}) ({n['tap_share']} > {_n(p.min_band_share)})"
            f" and on ({by.model}) ({n['vllm_acceptance']} >= {_n(p.disable_below)})",
        ),
        _alert(
            p,
            BASE,
            "SpecDecodePodAcceptanceOutlier",
            f"({n['pod_acceptance']} < on ({by.model}) group_left () ({n['vllm_acceptance']} - {_n(p.outlier_gap)}))"
            f" and on ({by.pod}) ({n['pod_requests']} > {_n(p.min_requests_per_second)})"
            f" and on ({by.pod}) ({n['pod_draft_rate']} > {_n(p.min_draft_tokens_per_second)})",
            p.for_outlier,
            "warning",
            f"{_pod(p)} accepts far fewer drafts than the rest of {MODEL}.",
            f"Draft acceptance on {_pod(p)} in {NS} is {PERCENT}, more than {_points(p.outlier_gap)} points below "
            f"the fleet ratio of {MODEL} over the same window: a pod with another draft or target checkpoint (a "
            "half-rolled update), other hardware, or traffic routed to it alone. Compare its image and arguments "
            "with a healthy pod's.",
            ("namespace", "pod", "model_name"),
        ),
        _alert(
            p,
            BASE,
            "SpecDecodeTailDivergenceWidening",
            # vLLM's histogram exists with or without speculation: only models that speculate are this alert's
            # business, and only with traffic now and a week ago (a canary then has no baseline worth paging on).
            f"({n['tpot_ratio']} / ({n['tpot_ratio']} offset {week}) > {_n(p.divergence_growth)})"
            f" and on ({by.model}) ({n['tpot_requests']} > {_n(p.min_tpot_requests_per_second)})"
            f" and on ({by.model}) ({n['tpot_requests']} offset {week} > {_n(p.min_tpot_requests_per_second)})"
            f" and on ({by.model}) {n['vllm_draft_rate']}",
            p.for_divergence,
            "warning",
            "TPOT P99/P50 divergence of {{ $labels.model_name }} is widening.",
            f"The TPOT P99/P50 ratio of {MODEL} in {NS} is {{{{ $value | humanize }}}}x what it was "
            f"{week} ago: the median may have improved while the tail regressed. Compare against a "
            "pool without speculative decoding. After a deliberate change, silence it for the "
            f"{week} the baseline takes to catch up (see the runbook).",
        ),
        _dropped(
            p,
            BASE,
            f"(({n['vllm_acceptance_baseline']} offset {week}) - {n['vllm_acceptance_baseline']}"
            f" > {_n(p.acceptance_drop)})"
            f" and on ({by.model}) ({n['vllm_draft_rate_baseline']} > {_n(p.min_draft_tokens_per_second)})"
            f" and on ({by.model}) ({n['vllm_draft_rate_baseline']} offset {week}"
            f" > {_n(p.min_draft_tokens_per_second)})",
        ),
        _squeeze(
            p,
            BASE,
            # Per engine of each pod: a full cache on one pod and preemptions on another are not a squeeze; a
            # pool without speculation (no spec series) in the same namespace is not this project's alert.
            f"({n['pod_kv_usage']} > {_n(p.kv_cache_usage_high)})"
            f" and on ({by.engine}) ({n['pod_preemptions']} > 0)"
            f" and on ({by.pod}) {n['pod_draft_rate']}",
        ),
        _missing(
            p,
            BASE,
            f"({n['vllm_speculated']} unless on ({by.model}) {_vllm('vllm:spec_decode_num_drafts_total', v)})"
            f" and on ({by.model}) {_vllm('vllm:num_requests_running', v)}",
        ),
    ]


def exporter_alerting_rules(p: Params) -> list[dict[str, Any]]:
    n, by, s = names(p), By(p), _sel(p.selector)
    floor = f"{n['draft_rate']} > {_n(p.min_draft_tokens_per_second)}"
    exporter_window = f'window="{p.exporter_window}"'
    target_up = f"spec_decode_exporter_target_up{s}"
    week = p.baseline_offset
    job = _sel(p.exporter_job_selector)
    # Where the base layer's recording rules see the same model, its alerts speak and these copies are silent. The
    # latch, not a rate: it is there whatever the scrape interval, through gaps, and for an idle model too.
    yield_model = f" unless on ({by.model}) {n['vllm_speculated']}"
    yield_band = f" unless on ({by.band}) {n['tap_requests']}"
    return [
        _net_negative(
            p, EXPORTER, f"(({n['acceptance']} < {_n(p.disable_below)}) and on ({by.model}) ({floor}))" + yield_model
        ),
        _near_break_even(
            p,
            EXPORTER,
            f"(({n['acceptance']} >= {_n(p.disable_below)} < {_n(p.beneficial_at)}) and on ({by.model}) ({floor}))"
            + yield_model,
        ),
        _band(
            p,
            EXPORTER,
            f"(({n['band_acceptance']} < {_n(p.disable_below)})"
            f" and on ({by.band}) ({n['band_draft_rate']} > {_n(p.min_band_draft_tokens_per_second)})"
            f" and on ({by.model}) ({n['acceptance']} >= {_n(p.disable_below)}))" + yield_band,
        ),
        _dropped(
            p,
            EXPORTER,
            f"((({n['acceptance_baseline']} offset {week}) - {n['acceptance_baseline']}"
            f" > {_n(p.acceptance_drop)})"
            f" and on ({by.model}) ({n['draft_rate_baseline']} > {_n(p.min_draft_tokens_per_second)})"
            f" and on ({by.model}) ({n['draft_rate_baseline']} offset {week}"
            f" > {_n(p.min_draft_tokens_per_second)}))" + yield_model,
        ),
        _squeeze(
            p,
            EXPORTER,
            f"((max by ({by.exporter_engine}) (spec_decode_kv_cache_usage_ratio{s}) > {_n(p.kv_cache_usage_high)})"
            f" and on ({by.exporter_engine})"
            f" (spec_decode_preemptions_per_second{_sel(p.selector, exporter_window)} > 0)"
            f" and on ({by.exporter_engine}) (spec_decode_enabled{s} == 1))" + yield_model,
        ),
        _missing(
            p,
            EXPORTER,
            f"(({n['speculated']} unless on ({by.model}) (spec_decode_enabled{s} == 1))"
            f" and on ({by.model}) spec_decode_enabled{s})" + yield_model,
        ),
        _alert(
            p,
            EXPORTER,
            "SpecDecodeTailWorseThanBaseline",
            f"(spec_decode_baseline_p99_latency_ratio{_sel(p.selector, exporter_window, TPOT)}"
            f" > {_n(p.tail_vs_baseline)})"
            f" and on ({p.cluster_label}, namespace, {p.pod_label}, target, baseline, window)"
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
            EXPORTER,
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
            EXPORTER,
            "SpecDecodeSlowdownAtLoad",
            # The one cost model's answer at the load the engine runs at, only where rho rests on evidence at that
            # load: the prior ignores load and cannot say "slower at this batch size".
            f"(spec_decode_expected_speedup{_sel(p.selector, exporter_window, EVIDENCE)}"
            f" < {_n(p.slowdown_below)})"
            f" and ignoring (source) (spec_decode_window_draft_tokens{_sel(p.selector, exporter_window)}"
            f" >= {_n(p.min_window_draft_tokens)})",
            p.for_slowdown,
            "warning",
            "Speculative decoding is slowing {{ $labels.target }} down at the load it runs at.",
            'At the load {{ $labels.target }} runs at now, speculative decoding is {{ printf "%.2f" $value }}x '
            "(acceptance length / step-cost ratio, {{ $labels.source }} evidence at this load), below "
            f"{_n(p.slowdown_below)}: each speculative step costs more than the tokens it gains. Lower k or turn "
            "speculation off above this batch size with speculative_config.num_speculative_tokens_per_batch_size.",
            ("namespace", "pod"),
        ),
        _alert(
            p,
            EXPORTER,
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
            EXPORTER,
            "SpecDecodeExporterDown",
            # A failing scrape of an exporter Prometheus still discovers: it carries namespace and pod. No absent():
            # a pool scaled to zero takes its exporters along and must not page all night.
            f"up{job} == 0",
            p.for_target_down,
            "warning",
            f"Prometheus cannot scrape spec_exporter on {_pod(p)} in {NS}.",
            f"Prometheus' scrapes of spec_exporter on {_pod(p)} in {NS} fail: none of the exporter layer's alerts "
            "can fire for it.",
            ("namespace", "pod"),
        ),
        _alert(
            p,
            EXPORTER,
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


def recording_rules(p: Params, layer: str | None = None) -> list[dict[str, Any]]:
    """The recording rules of one layer, or of both."""
    return [r for lay in _layers(layer) for r in rule_groups(p, lay)[f"{lay}-recording"]["groups"][0]["rules"]]


def alerting_rules(p: Params, layer: str | None = None) -> list[dict[str, Any]]:
    """The alerting rules of one layer, or of both (the exporter layer's copies of base alerts included)."""
    return [r for lay in _layers(layer) for r in rule_groups(p, lay)[f"{lay}-alerting"]["groups"][0]["rules"]]


def _layers(layer: str | None) -> tuple[str, ...]:
    if layer is not None and layer not in LAYERS:
        raise ValueError(f"no layer {layer!r}; the layers are {', '.join(LAYERS)}")
    return LAYERS if layer is None else (layer,)


def rule_groups(p: Params, layer: str | None = None) -> dict[str, Any]:
    """Rule files by `<layer>-<kind>`, each one group named after its layer."""
    build = {
        BASE: (base_recording_rules, base_alerting_rules),
        EXPORTER: (exporter_recording_rules, exporter_alerting_rules),
    }
    docs = {}
    for lay in _layers(layer):
        recording, alerting = build[lay]
        docs[f"{lay}-recording"] = {"groups": [{"name": f"spec-decode-{lay}.rules", "rules": recording(p)}]}
        docs[f"{lay}-alerting"] = {"groups": [{"name": f"spec-decode-{lay}.alerts", "rules": alerting(p)}]}
    return docs
