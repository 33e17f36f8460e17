"""Grafana dashboards as plain data (pure). Stable uids, a datasource variable first, then cluster, job, namespace,
pod, model_name, engine, temperature_band and window; `$__rate_interval` in every rate; each panel links to the
runbook sections of the alerts it explains, and the alerts link back by uid."""

from __future__ import annotations

from typing import Any

from mixin.params import OVERVIEW_UID, Params
from mixin.rules import LATENCY, names

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# `cluster` is an external label of multi-cluster setups and absent elsewhere: its "All" value `.*` also matches
# series without it, so the dashboard works either way.
SCOPE = 'cluster=~"$cluster", job=~"$job", namespace=~"$namespace", pod=~"$pod"'
POD = SCOPE
TAP = SCOPE + ', model_name=~"$model_name"'
ENGINE = TAP + ', engine=~"$engine"'
# vLLM's own series come from its own job (not the exporter's), in the same cluster, namespace and pod.
VLLM = 'cluster=~"$cluster", namespace=~"$namespace", pod=~"$pod"'
# The base layer (vLLM's series, spec_tap_* and the base recording rules): whatever vLLM's job is called.
BASE_POD = VLLM + ', model_name=~"$model_name"'
BASE_MODEL = 'cluster=~"$cluster", namespace=~"$namespace", model_name=~"$model_name"'
BASE_BAND = BASE_MODEL + ', temperature_band=~"$temperature_band"'
RATE = "[$__rate_interval]"


def _target(expr: str, legend: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


ACCEPTANCE_STEPS = _thresholds((None, "red"), (0.5, "orange"), (0.65, "green"))
# An acceptance axis: 0..1 with the 0.5 (net-negative) and 0.65 (likely gain) lines drawn.
ACCEPTANCE_AXIS: dict[str, Any] = {
    "unit": "percentunit",
    "thresholds": ACCEPTANCE_STEPS,
    "min_": 0,
    "max_": 1,
    "threshold_lines": True,
}


class _Layout:
    """Places panels left to right on Grafana's 24-column grid and hands out ids."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._x = self._y = self._row_height = 0
        self._id = 0

    def row(self, title: str) -> None:
        self._newline()
        self._id += 1
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
            }
        )
        self._y += 1

    def _newline(self) -> None:
        self._y += self._row_height
        self._x = self._row_height = 0

    def add(self, panel: dict[str, Any], w: int, h: int = 8) -> None:
        if self._x + w > 24:
            self._newline()
        self._id += 1
        panel.update(id=self._id, gridPos={"h": h, "w": w, "x": self._x, "y": self._y}, datasource=DATASOURCE)
        self.panels.append(panel)
        self._x += w
        self._row_height = max(self._row_height, h)


def _panel(
    kind: str,
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    thresholds: dict[str, Any] | None = None,
    min_: float | None = None,
    max_: float | None = None,
    threshold_lines: bool = False,
    options: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    runbooks: tuple[str, ...] = (),
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if thresholds is not None:
        defaults["thresholds"] = thresholds
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if threshold_lines:
        defaults["custom"] = {"thresholdsStyle": {"mode": "line+area"}}
    if mappings:
        defaults["mappings"] = mappings
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    if transformations:
        panel["transformations"] = transformations
    if runbooks:
        # Resolved to URLs by `_link_runbooks`, which knows where the runbooks are published.
        panel["links"] = [_link(f"Runbook: {alert}", alert, f"What {alert} means and what to do") for alert in runbooks]
    return panel


def _link(title: str, url: str, tooltip: str) -> dict[str, Any]:
    # Grafana's schema types panel links as dashboard links: every field spelled out.
    return {
        "title": title,
        "type": "link",
        "url": url,
        "icon": "doc",
        "tooltip": tooltip,
        "targetBlank": True,
        "asDropdown": False,
        "includeVars": False,
        "keepTime": False,
        "tags": [],
    }


def _link_runbooks(panels: list[dict[str, Any]], p: Params) -> None:
    for panel in panels:
        for link in panel.get("links", []):
            link["url"] = p.runbook(link["url"])


def _value_map(options: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """A value mapping: each raw value shown as a word, in a colour."""
    return {
        "type": "value",
        "options": {
            raw: {"text": text, "color": color, "index": i} for i, (raw, (text, color)) in enumerate(options.items())
        },
    }


# Each verdict the exporter emits, as a word and a colour (the stateset's label values, mixin-side; the tests
# check them against spec_exporter's Verdict).
VERDICT_WORDS = {
    "disable": ("Disable: net-negative", "red"),
    "break_even": ("Break-even: measure P99", "orange"),
    "beneficial": ("Beneficial", "green"),
    "insufficient_data": ("Too little traffic", "#8e8e8e"),
}
UP_WORDS = {"0": ("down", "red"), "1": ("up", "green")}


def _query_var(
    name: str,
    label: str,
    query: str,
    *,
    include_all: bool = True,
    current: dict[str, Any] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        **({"description": description} if description else {}),
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,
        "includeAll": include_all,
        "multi": include_all,
        **({"allValue": ".*"} if include_all else {}),
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else (current or {}),
        "sort": 1,
        "hide": 0,
    }


def _vllm(metric: str, scope: str = BASE_POD) -> str:
    return f'{{__name__="{metric}", {scope}}}'


def overview(p: Params | None = None) -> dict[str, Any]:
    p = p or Params()
    n = names(p)
    g = _Layout()
    g.row("Verdict")
    g.add(
        _panel(
            "table",
            "Verdict by model and temperature band",
            "What the exporter concludes over its verdict window, by one rule: where the step-cost ratio has evidence "
            "at the current load (a baseline pool or a calibration profile) the verdict follows the speedup there "
            "(disable below 1.0, break-even below 1.1); with only the prior, which ignores load, it follows the "
            "acceptance policy on vLLM's rate (disable below 0.5, break-even below 0.65). Too little traffic when too "
            'few draft tokens flowed. Band "all" is the engine\'s own counters; the other bands come from the tap.',
            [
                _target(
                    # The tap's bands carry engine="": `|` keeps them whichever engine is selected.
                    "max by (model_name, temperature_band, verdict) "
                    f'(spec_decode_verdict{{{TAP}, engine=~"$engine|"}}) == 1',
                    "",
                    "A",
                    instant=True,
                    format="table",
                )
            ],
            options={"showHeader": True, "sortBy": [{"displayName": "Verdict", "desc": False}]},
            mappings=[_value_map(VERDICT_WORDS)],
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value": True},
                        "indexByName": {"model_name": 0, "temperature_band": 1, "verdict": 2},
                        "renameByName": {
                            "model_name": "Model",
                            "temperature_band": "Temperature band",
                            "verdict": "Verdict",
                        },
                    },
                }
            ],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Verdict"},
                    "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}}],
                }
            ],
            runbooks=("SpecDecodeNetNegative", "SpecDecodeNearBreakEven", "SpecDecodeTemperatureBandNetNegative"),
        ),
        12,
    )
    g.add(
        _panel(
            "stat",
            "Draft acceptance",
            "Accepted / proposed draft tokens per model over the base layer's rate window, from vLLM's own counters: "
            "a ratio of sums across pods. Red below 0.5 (net-negative), orange to 0.65.",
            [_target(f"{n['vllm_acceptance']}{{{BASE_MODEL}}}", "{{namespace}}/{{model_name}}", "A")],
            unit="percentunit",
            thresholds=ACCEPTANCE_STEPS,
            min_=0,
            max_=1,
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "background",
            },
            runbooks=("SpecDecodeNetNegative", "SpecDecodeNearBreakEven"),
        ),
        6,
    )
    g.add(
        _panel(
            "stat",
            "Speedup at the current load",
            "Acceptance length / step-cost ratio rho at the load each pod runs at, from the one cost model. The "
            "legend names rho's evidence: baseline (measured against a baseline pool at the same load band), "
            "calibration (a probe profile read at the live running batch) or prior (1 + k*c, which ignores load: "
            "then the verdict follows acceptance, not this number).",
            [
                _target(
                    "max by (cluster, namespace, pod, model_name, source) "
                    f'(spec_decode_expected_speedup{{{ENGINE}, window="$window"}})',
                    "{{pod}} {{model_name}} ({{source}})",
                    "A",
                )
            ],
            unit="x",
            thresholds=_thresholds((None, "red"), (1, "green")),
            options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
            runbooks=("SpecDecodeSlowdownAtLoad", "SpecDecodeSlowerThanBaselineAtLoad"),
        ),
        6,
    )
    g.row("Cost at the current load")
    g.add(
        _panel(
            "timeseries",
            "Acceptance against break-even at the current load",
            "Each pod's draft acceptance (vLLM's rate) beside the rate at which speculation breaks even at the load "
            "it runs at, (rho - 1) / k_eff, in the same units. Acceptance below the line: each speculative step "
            "costs more than it gains. The line moves with load when rho comes from a baseline or a calibration.",
            [
                _target(
                    "max by (cluster, namespace, pod, model_name) "
                    f'(spec_decode_draft_acceptance_rate{{{ENGINE}, window="$window"}})',
                    "acceptance {{pod}} {{model_name}}",
                    "A",
                ),
                _target(
                    "max by (cluster, namespace, pod, model_name, source) "
                    f'(spec_decode_break_even_acceptance_rate{{{ENGINE}, window="$window"}})',
                    "break-even {{pod}} {{model_name}} ({{source}})",
                    "B",
                ),
            ],
            unit="percentunit",
            min_=0,
            max_=1,
            runbooks=("SpecDecodeNetNegative", "SpecDecodeSlowdownAtLoad"),
        ),
        8,
    )
    g.add(
        _panel(
            "timeseries",
            "Step-cost ratio rho",
            "Time of one speculative step over one plain step at the running batch, with its evidence: baseline, "
            "calibration or prior. Near 1 + k*c at small batch; it climbs as verification turns compute-bound.",
            [
                _target(
                    "max by (cluster, namespace, pod, model_name, source) "
                    f'(spec_decode_step_cost_ratio{{{ENGINE}, window="$window"}})',
                    "{{pod}} {{model_name}} ({{source}})",
                    "A",
                )
            ],
            unit="x",
            runbooks=("SpecDecodeSlowdownAtLoad",),
        ),
        8,
    )
    g.add(
        _panel(
            "timeseries",
            "Speedup by temperature band at the current load",
            "Each band's own acceptance length (the tap's accepted tokens over speculative steps) over the engine's "
            "step cost at its load, priced for the k the band drafted: which requests speculation pays for, now.",
            [
                _target(
                    "max by (cluster, namespace, pod, model_name, temperature_band, source) "
                    f'(spec_decode_request_expected_speedup{{{TAP}, workload=~"$workload", window="$window"}})',
                    "{{pod}} {{temperature_band}} ({{source}})",
                    "A",
                )
            ],
            unit="x",
            thresholds=_thresholds((None, "red"), (1, "green")),
            runbooks=("SpecDecodeTemperatureBandNetNegative", "SpecDecodeSlowdownAtLoad"),
        ),
        8,
    )

    g.row("By pod")
    pod_columns = {
        "A": ("Acceptance", f"{n['pod_acceptance']}{{{BASE_POD}}}"),
        "B": ("Acceptance length", f"{n['pod_length']}{{{BASE_POD}}}"),
        "C": ("TPOT p99", f"{n['pod_tpot_p99']}{{{BASE_POD}}}"),
        "D": ("KV cache", f"max by (cluster, namespace, pod, model_name) ({n['pod_kv_usage']}{{{BASE_POD}}})"),
        # The exporter layer's verdict for the pod's engine counters, where a sidecar runs.
        "E": (
            "Verdict",
            "max by (cluster, namespace, pod, model_name, verdict) "
            f'(spec_decode_verdict{{{TAP}, temperature_band="all"}}) == 1',
        ),
    }
    g.add(
        _panel(
            "table",
            "Pods",
            "Every pod of the selected models: draft acceptance and acceptance length over the base layer's rate "
            "window, its TPOT p99, its fullest KV cache, and the exporter's verdict where a sidecar runs. Sort by "
            "acceptance: a pod far below the others (SpecDecodePodAcceptanceOutlier) is a half-rolled checkpoint, "
            "other hardware or traffic of its own.",
            [_target(expr, "", ref, instant=True, format="table") for ref, (_, expr) in pod_columns.items()],
            options={"showHeader": True, "sortBy": [{"displayName": "Acceptance", "desc": False}]},
            mappings=[_value_map(VERDICT_WORDS)],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #E": True},
                        "renameByName": {
                            **{f"Value #{ref}": title for ref, (title, _) in pod_columns.items()},
                            "verdict": "Verdict",
                            "pod": "Pod",
                            "model_name": "Model",
                            "namespace": "Namespace",
                            "cluster": "Cluster",
                        },
                    },
                },
            ],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": title},
                    "properties": [{"id": "unit", "value": unit}],
                }
                for title, unit in (("Acceptance", "percentunit"), ("TPOT p99", "s"), ("KV cache", "percentunit"))
            ]
            + [
                {
                    "matcher": {"id": "byName", "options": "Verdict"},
                    "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}}],
                }
            ],
            runbooks=("SpecDecodePodAcceptanceOutlier", "SpecDecodeKVCacheSqueeze"),
        ),
        24,
        10,
    )

    g.row("Acceptance")
    g.add(
        _panel(
            "timeseries",
            "Draft acceptance rate",
            "Acceptance over time per model (a ratio of sums across its pods, from vLLM's own counters), with the 0.5 "
            "(net-negative) and 0.65 (likely gain) lines. A dip that follows the temperature mix shows in the band "
            "panels below; one pod far below the rest shows in the per-pod table.",
            [_target(f"{n['vllm_acceptance']}{{{BASE_MODEL}}}", "{{namespace}}/{{model_name}}", "A")],
            **ACCEPTANCE_AXIS,
            runbooks=("SpecDecodeNetNegative", "SpecDecodeNearBreakEven", "SpecDecodeAcceptanceDropped"),
        ),
        12,
    )
    g.add(
        _panel(
            "timeseries",
            "Mean acceptance length",
            "Tokens per verification step including the bonus token "
            "(1 + accepted / drafts): between 1 (every draft rejected) and k + 1.",
            [_target(f"{n['vllm_length']}{{{BASE_MODEL}}}", "{{namespace}}/{{model_name}}", "A")],
            min_=1,
        ),
        6,
    )
    g.add(
        _panel(
            "timeseries",
            "Acceptance by draft position",
            "Share of drafts whose token at each position was accepted. "
            "Later positions are only accepted if all earlier ones were, so the curve falls; positions that rarely pay "
            "are the ones to cut with a lower num_speculative_tokens.",
            [_target(f"{n['vllm_position']}{{{BASE_MODEL}}}", "{{model_name}} pos {{position}}", "A")],
            unit="percentunit",
            min_=0,
            max_=1,
        ),
        6,
    )

    g.row("By temperature (tap)")
    g.add(
        _panel(
            "heatmap",
            "Per-request acceptance distribution",
            "Each request's acceptance rate, from the tap. A bimodal "
            "picture (a cluster above 0.65 and one below 0.5) is the mixed workload a single average hides.",
            [
                _target(
                    f"sum by (le) (increase(spec_tap_request_acceptance_rate_bucket{{{VLLM}, "
                    f'model_name=~"$model_name", temperature_band=~"$temperature_band"}}{RATE}))',
                    "{{le}}",
                    "A",
                    format="heatmap",
                )
            ],
            options={"calculate": False, "yAxis": {"unit": "percentunit"}, "color": {"scheme": "Oranges"}},
            runbooks=("SpecDecodeTemperatureBandNetNegative",),
        ),
        12,
    )
    g.add(
        _panel(
            "timeseries",
            "Acceptance P10 / P50 / P90 by band",
            "Percentiles of per-request acceptance per temperature band, computed once by the base layer's "
            "recording rules from the tap's fine-bucket histogram (0.025 wide) summed across pods. Watch P10: it is "
            "the requests that slow the batch down.",
            [
                _target(f"{n[key]}{{{BASE_BAND}}}", f"{{{{model_name}}}} {{{{temperature_band}}}} {key[4:]}", ref)
                for key, ref in (("tap_p10", "A"), ("tap_p50", "B"), ("tap_p90", "C"))
            ],
            **ACCEPTANCE_AXIS,
            runbooks=("SpecDecodeTemperatureBandNetNegative",),
        ),
        12,
    )
    g.add(
        _panel(
            "timeseries",
            "Acceptance by band",
            "Accepted / drafted tokens per temperature band (ratio of the tap's "
            "counter halves). Acceptance falls as temperature rises; a band below 0.5 should leave this pool.",
            [_target(f"{n['tap_acceptance']}{{{BASE_BAND}}}", "{{model_name}} {{temperature_band}}", "A")],
            **ACCEPTANCE_AXIS,
            runbooks=("SpecDecodeTemperatureBandNetNegative",),
        ),
        12,
    )
    g.add(
        _panel(
            "timeseries",
            "Requests through the tap",
            "Completion requests per second by band and outcome. "
            "no_spec_metrics means vLLM lacks --per-request-spec-decode-metrics summary; unreported, that vLLM "
            "has no per-request numbers for the request (stop string, several prompts); other_endpoint, an "
            "endpoint whose answers carry none (/v1/responses, /v1/messages, ...).",
            [
                _target(
                    f"sum by (temperature_band, outcome) (rate(spec_tap_requests_total{{{BASE_POD}, "
                    f'temperature_band=~"$temperature_band"}}{RATE}))',
                    "{{temperature_band}} {{outcome}}",
                    "A",
                )
            ],
            unit="reqps",
            runbooks=("SpecDecodeTapWithoutPerRequestMetrics",),
        ),
        12,
    )

    g.add(
        _panel(
            "timeseries",
            "Which workload pays: acceptance by workload and band",
            "Draft acceptance of each request class (the tap's workload label) in each temperature band, a ratio of "
            "sums across pods from vLLM's own /metrics (base layer, no sidecar): a code endpoint at low temperature "
            "and a hot chat share one verification pass but not one number.",
            [
                _target(
                    f'{n["workload_acceptance"]}{{{BASE_BAND}, workload=~"$workload"}}',
                    "{{model_name}} {{workload}} {{temperature_band}}",
                    "A",
                )
            ],
            unit="percentunit",
            min_=0,
            max_=1,
            thresholds=ACCEPTANCE_STEPS,
            runbooks=("SpecDecodeTemperatureBandNetNegative",),
        ),
        12,
    )
    g.add(
        _panel(
            "timeseries",
            "Which workload pays: speedup by workload and band at the current load",
            "Each class's own acceptance length per band over the engine's step cost at its load (exporter layer): "
            "below 1, speculation costs that workload more than it gains; route it to a pool without it or lower k.",
            [
                _target(
                    "max by (cluster, namespace, pod, model_name, workload, temperature_band, source) "
                    f'(spec_decode_request_expected_speedup{{{TAP}, workload=~"$workload", window="$window"}})',
                    "{{pod}} {{workload}} {{temperature_band}} ({{source}})",
                    "A",
                )
            ],
            unit="x",
            thresholds=_thresholds((None, "red"), (1, "green")),
            runbooks=("SpecDecodeSlowdownAtLoad",),
        ),
        12,
    )

    g.row("Latency")
    for metric, title, note, runbooks in (
        ("ttft", "TTFT", "Speculative decoding does not speed up the first token (it may slow it slightly).", ()),
        (
            "tpot",
            "TPOT",
            "Per request: decode time / (tokens - 1). This is where speculation should help.",
            ("SpecDecodeTailDivergenceWidening", "SpecDecodeTailWorseThanBaseline"),
        ),
        (
            "itl",
            "ITL",
            "One observation per engine step, and with speculation a step emits 1 + accepted tokens: "
            "compare it with the mean acceptance length, not with TPOT.",
            (),
        ),
    ):
        g.add(
            _panel(
                "timeseries",
                f"{title} p50 / p95 / p99",
                note + " Fleet percentiles per model from the base layer's recording rules: histogram_quantile "
                f"over vLLM's {LATENCY[metric]} buckets summed across pods (not a max of per-pod quantiles).",
                [
                    _target(f"{n[f'{metric}_{q}']}{{{BASE_MODEL}}}", f"{{{{model_name}}}} {q}", ref)
                    for q, ref in (("p50", "A"), ("p95", "B"), ("p99", "C"))
                ],
                unit="s",
                runbooks=runbooks,
            ),
            8,
        )
    g.add(
        _panel(
            "timeseries",
            "P99 / P50 divergence",
            "How far the tail sits from the median. Widening after speculative "
            "decoding was enabled means the tail pays for the median.",
            [
                _target(f"{n['ttft_ratio']}{{{BASE_MODEL}}}", "{{model_name}} ttft", "A"),
                _target(f"{n['tpot_ratio']}{{{BASE_MODEL}}}", "{{model_name}} tpot", "B"),
            ],
            unit="x",
            runbooks=("SpecDecodeTailDivergenceWidening",),
        ),
        12,
    )
    g.add(
        _panel(
            "timeseries",
            "Against the baseline pool",
            "Measured TPOT speedup (baseline p50 / this pool's p50) and "
            "this pool's p99 over the baseline's. Speedup above 1 with a p99 ratio above 1 is the mixed-workload "
            "signature. Empty without a baseline target.",
            [
                _target(
                    f'max by (target, baseline) (spec_decode_baseline_tpot_speedup_ratio{{{POD}, window="$window"}})',
                    "{{target}} TPOT speedup",
                    "A",
                ),
                _target(
                    f"max by (target, baseline, metric) (spec_decode_baseline_p99_latency_ratio{{{POD}, "
                    f'window="$window"}})',
                    "{{target}} {{metric}} p99 ratio",
                    "B",
                ),
            ],
            unit="x",
            runbooks=("SpecDecodeTailWorseThanBaseline",),
        ),
        12,
    )

    g.row("Load and memory")
    g.add(
        _panel(
            "timeseries",
            "Generated tokens per second",
            "Throughput (accepted draft tokens included). At high load "
            "speculative decoding turns into a slowdown: read it with the running and waiting requests.",
            [
                _target(
                    f"sum by (model_name) (rate({_vllm('vllm:generation_tokens_total')}{RATE}))",
                    "{{model_name}}",
                    "A",
                )
            ],
            unit="short",
        ),
        6,
    )
    g.add(
        _panel(
            "timeseries",
            "Running and waiting requests",
            "Requests in the engine at each poll. Waiting requests "
            "mean saturation, where speculation costs more than it saves.",
            [
                _target(f"sum by (model_name) ({_vllm('vllm:num_requests_running')})", "{{model_name}} running", "A"),
                _target(f"sum by (model_name) ({_vllm('vllm:num_requests_waiting')})", "{{model_name}} waiting", "B"),
            ],
            runbooks=("SpecDecodeSlowerThanBaselineAtLoad",),
        ),
        6,
    )
    g.add(
        _panel(
            "timeseries",
            "KV-cache usage",
            "Share of the KV cache in use, per pod (its fullest engine). The draft's weights and KV come out of the "
            "same memory: high usage with preemptions on the same pod (next panel) is the squeeze.",
            [
                _target(
                    f"max by (cluster, namespace, pod) ({n['pod_kv_usage']}{{{BASE_POD}}})",
                    "{{namespace}}/{{pod}}",
                    "A",
                )
            ],
            unit="percentunit",
            min_=0,
            max_=1,
            runbooks=("SpecDecodeKVCacheSqueeze",),
        ),
        6,
    )

    g.add(
        _panel(
            "timeseries",
            "Preemptions per second",
            "Requests preempted per second per pod (vLLM recomputes their KV): with a full cache on the same pod, "
            "the draft is taking memory the target needs.",
            [
                _target(
                    f"sum by (cluster, namespace, pod) ({n['pod_preemptions']}{{{BASE_POD}}})",
                    "{{namespace}}/{{pod}}",
                    "A",
                )
            ],
            unit="suffix:/s",
            min_=0,
            runbooks=("SpecDecodeKVCacheSqueeze",),
        ),
        6,
    )
    g.row("Load against the baseline pool")
    g.add(
        _panel(
            "stat",
            "Load band now",
            "Running requests per engine averaged over the window, as the band the exporter files it under. "
            "Speculation that pays at batch 1 can lose at 17-32: the next panel says which bands it loses in.",
            [
                _target(
                    f"max by (target, engine, load_band) (spec_decode_load_band_info{{{ENGINE}}}) == 1",
                    "{{target}} engine {{engine}}: {{load_band}}",
                    "A",
                    instant=True,
                )
            ],
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": "name",
                "colorMode": "none",
            },
            runbooks=("SpecDecodeSlowerThanBaselineAtLoad",),
        ),
        6,
    )
    g.add(
        _panel(
            "timeseries",
            "Measured speedup by load band",
            "Baseline pool's TPOT / this pool's TPOT at each load band (running requests per engine), where both "
            "pools were observed in the window. Below 1 speculation is slower there: turn it off for that batch-size "
            "range with num_speculative_tokens_per_batch_size. Empty without a baseline target.",
            [
                _target(
                    "max by (target, baseline, load_band) "
                    f'(spec_decode_baseline_load_band_tpot_speedup{{{POD}, window="$window"}})',
                    "{{target}} at {{load_band}}",
                    "A",
                )
            ],
            unit="x",
            thresholds=_thresholds((None, "red"), (1, "green")),
            threshold_lines=True,
            runbooks=("SpecDecodeSlowerThanBaselineAtLoad",),
        ),
        18,
    )

    g.add(
        _panel(
            "table",
            "Speculative configuration by pod",
            "What decides acceptance besides temperature, as vLLM runs it: the speculative method (draft model, "
            "EAGLE, MTP, n-gram), k, the draft model, and how drafts are sampled and verified. The middleware reads "
            "vLLM's speculative_config once (no vLLM metric carries it); two pods of one model that differ here "
            "will not accept alike.",
            [
                _target(
                    "max by (cluster, namespace, pod, method, num_speculative_tokens, draft_model, "
                    "draft_sample_method, rejection_sample_method) "
                    f"(spec_tap_speculative_config_info{{{VLLM}}})",
                    "",
                    "A",
                    instant=True,
                    format="table",
                )
            ],
            options={"showHeader": True},
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value": True},
                        "renameByName": {
                            "pod": "Pod",
                            "method": "Method",
                            "num_speculative_tokens": "k",
                            "draft_model": "Draft model",
                            "draft_sample_method": "Draft sampling",
                            "rejection_sample_method": "Verification",
                        },
                    },
                }
            ],
            runbooks=("SpecDecodePodAcceptanceOutlier",),
        ),
        24,
    )

    g.row("Tap and exporter health")
    g.add(
        _panel(
            "timeseries",
            "Tap coverage",
            "Draft tokens the tap measured / draft tokens vLLM counted, over the window. "
            "Below 1, traffic bypasses the tap (or long requests are still running), and the band panels describe only "
            "part of it.",
            [
                _target(
                    f'max by (target) (spec_decode_tap_coverage_ratio{{{POD}, window="$window"}})', "{{target}}", "A"
                )
            ],
            unit="percentunit",
            min_=0,
        ),
        8,
    )
    g.add(
        _panel(
            "state-timeline",
            "Exporter: targets up",
            "Whether the last poll of each target's /metrics succeeded. Down during a cold start is expected (vLLM "
            "serves no /metrics while it loads); the alert waits for the start-up budget.",
            [_target(f"min by (target) (spec_decode_exporter_target_up{{{POD}}})", "{{target}}", "A")],
            unit="none",
            thresholds=_thresholds((None, "red"), (1, "green")),
            mappings=[_value_map(UP_WORDS)],
            min_=0,
            max_=1,
            runbooks=("SpecDecodeExporterTargetDown", "SpecDecodeExporterDown"),
        ),
        8,
    )
    g.add(
        _panel(
            "timeseries",
            "Exporter: poll duration",
            "How long the last poll of each target took: fetch, parse and derive.",
            [_target(f"max by (target) (spec_decode_exporter_poll_duration_seconds{{{POD}}})", "{{target}}", "A")],
            unit="s",
            min_=0,
            runbooks=("SpecDecodeExporterTargetDown",),
        ),
        8,
    )
    g.add(
        _panel(
            "timeseries",
            "Exporter: poll errors and tap errors",
            "Failed polls by reason, and requests or responses the tap could not read (passed through untouched).",
            [
                _target(
                    f"sum by (target, reason) (rate(spec_decode_exporter_poll_errors_total{{{POD}}}{RATE}))",
                    "{{target}} {{reason}}",
                    "A",
                ),
                _target(
                    f"sum by (target, stage) (rate(spec_decode_tap_errors_total{{{POD}}}{RATE}))",
                    "{{target}} tap {{stage}}",
                    "B",
                ),
            ],
            unit="reqps",
            runbooks=("SpecDecodeExporterTargetDown",),
        ),
        8,
    )

    _link_runbooks(g.panels, p)
    return {
        "uid": OVERVIEW_UID,
        "title": "Speculative decoding",
        "description": "Is speculative decoding paying off on this traffic? From spec_exporter.",
        "tags": ["spec-exporter", "vllm", "speculative-decoding"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [_link("Runbooks", p.runbook_url, "What each spec-decode alert means and what to do")],
        "annotations": {"list": _annotations()},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    # "default" resolves to Grafana's default Prometheus data source on import.
                    "current": {"selected": False, "text": "default", "value": "default"},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "includeAll": False,
                    "multi": False,
                },
                _query_var(
                    "cluster",
                    "Cluster",
                    "label_values(vllm:num_requests_running, cluster)",
                    description="The cluster external label of a multi-cluster Prometheus (Thanos, Mimir); "
                    "empty and harmless where series have no cluster label.",
                ),
                _query_var(
                    "job",
                    "Exporter job",
                    'label_values(spec_decode_exporter_build_info{cluster=~"$cluster"}, job)',
                    description="The exporter layer's panels only; vLLM's own series are read whatever their job.",
                ),
                # From vLLM's own series: the dashboard works with the base layer alone (no sidecar).
                _query_var(
                    "namespace",
                    "Namespace",
                    'label_values(vllm:num_requests_running{cluster=~"$cluster"}, namespace)',
                ),
                _query_var(
                    "pod",
                    "Pod",
                    'label_values(vllm:num_requests_running{cluster=~"$cluster", namespace=~"$namespace"}, pod)',
                ),
                _query_var(
                    "model_name",
                    "Model",
                    'label_values(vllm:num_requests_running{cluster=~"$cluster", namespace=~"$namespace"}, model_name)',
                ),
                _query_var(
                    "engine",
                    "Engine",
                    f'label_values(spec_decode_enabled{{{SCOPE}, model_name=~"$model_name"}}, engine)',
                    description="vLLM's data-parallel rank (empty on the V0 engine). The tap's panels are per "
                    "request and have no engine.",
                ),
                _query_var(
                    "temperature_band",
                    "Temperature band",
                    f'label_values(spec_tap_requests_total{{{VLLM}, model_name=~"$model_name"}}, temperature_band)',
                ),
                _query_var(
                    "workload",
                    "Workload",
                    f'label_values(spec_tap_requests_total{{{VLLM}, model_name=~"$model_name"}}, workload)',
                    description="The tap's request class (tap.workload_header, the model alias or the route prefix; "
                    "default when none, other for classes beyond the configured set).",
                ),
                _query_var(
                    "window",
                    "Window",
                    f"label_values(spec_decode_latency_seconds_count{{{SCOPE}}}, window)",
                    include_all=False,
                    current={"selected": True, "text": "5m", "value": "5m"},
                ),
            ]
        },
        "panels": g.panels,
    }


def _annotations() -> list[dict[str, Any]]:
    """Events to read the panels against: vLLM restarts, speculation config changes and firing alerts."""

    def prometheus(name: str, color: str, expr: str, title: str, tags: str, text: str = "") -> dict[str, Any]:
        return {
            "name": name,
            "datasource": DATASOURCE,
            "enable": True,
            "hide": False,
            "iconColor": color,
            "expr": expr,
            "step": "1m",
            "titleFormat": title,
            "textFormat": text,
            "tagKeys": tags,
            "useValueForTime": False,
        }

    return [
        {
            "name": "Annotations & Alerts",
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "type": "dashboard",
        },
        prometheus(
            "vLLM restarts",
            "purple",
            # vLLM's process (its own job), not the exporter's, which shares the pod: only instances that
            # serve vllm:* series.
            f"changes(process_start_time_seconds{{{VLLM}}}[$__rate_interval]) > 0"
            f' and on (job, instance) {{__name__="vllm:num_requests_running", {VLLM}}}',
            "vLLM restarted: {{pod}}",
            "namespace,pod",
        ),
        prometheus(
            "Speculation config changed",
            "orange",
            f"changes(spec_decode_num_speculative_tokens{{{ENGINE}}}[$__rate_interval]) > 0"
            f" or changes(spec_decode_enabled{{{ENGINE}}}[$__rate_interval]) > 0",
            "Speculation config changed: {{target}} ({{model_name}})",
            "namespace,target",
            "num_speculative_tokens or speculative decoding on/off changed",
        ),
        prometheus(
            "Spec-decode alerts",
            "red",
            'ALERTS{alertname=~"SpecDecode.*", alertstate="firing", cluster=~"$cluster", namespace=~"$namespace"}',
            "{{alertname}}",
            "alertname,severity",
            "{{alertname}} firing ({{severity}})",
        ),
    ]


def dashboards(p: Params | None = None) -> list[dict[str, Any]]:
    return [overview(p)]
