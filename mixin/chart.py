"""The Helm chart's generated files: its PrometheusRule template (one object per rule layer), from mixin/rules.py,
the mixin defaults its other templates need, and its dashboards.

A chart cannot read files outside its own folder, so the rules and dashboards reach helm/spec-exporter through this
step, run by `python -m mixin` with everything else. The rules are rendered from the same `rule_groups` that writes
alerts/, with every value-driven parameter replaced by a placeholder that becomes a Helm expression; with the chart's
default values the layers together render exactly the rules in alerts/ (tests/unit/test_chart.py renders them with real
Helm and compares, and regenerates these files to prove they are current).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from mixin.params import Params
from mixin.rules import LAYERS, rule_groups

CHART = Path("helm") / "spec-exporter"
RULE_TEMPLATE = "templates/prometheusrule.yaml"
MIXIN_TEMPLATE = "templates/_mixin.tpl"
# The label that says which layer a PrometheusRule holds.
LAYER_LABEL = "spec-exporter.dev/rule-layer"
DASHBOARDS = "dashboards"

# Each value-driven Params field and the chart value that replaces it. Numbers print as Go prints a float64, which
# matches `_n` for every default; the `for` durations are validated by the chart's schema.
VALUES = {
    "disable_below": "thresholds.disableBelow",
    "beneficial_at": "thresholds.beneficialAt",
    "min_draft_tokens_per_second": "thresholds.minDraftTokensPerSecond",
    "min_band_draft_tokens_per_second": "thresholds.minBandDraftTokensPerSecond",
    "acceptance_drop": "thresholds.acceptanceDrop",
    "divergence_growth": "thresholds.divergenceGrowth",
    "tail_vs_baseline": "thresholds.tailVsBaseline",
    "kv_cache_usage_high": "thresholds.kvCacheUsageHigh",
    "for_net_negative": "for.netNegative",
    "for_break_even": "for.breakEven",
    "for_band": "for.band",
    "for_divergence": "for.divergence",
    "for_drop": "for.drop",
    "for_squeeze": "for.squeeze",
    "for_target_down": "for.targetDown",
    "for_missing": "for.missing",
    "runbook_url": "runbookUrl",
    "grafana_url": "grafanaUrl",
    "exporter_job_selector": "exporterJobSelector",
}
# Chart values whose Helm expression is more than the value itself: the exporter's job selector defaults to the job
# and namespace this release's monitor gives it; a Grafana URL may end in a slash.
_EXPRESSIONS = {
    "exporter_job_selector": '(include "spec-exporter.exporterJobSelector" $)',
    "grafana_url": '(trimSuffix "/" $.Values.prometheusRule.grafanaUrl)',
}
# Changes the shape of a selector (`{}` or none), so the template carries both renderings of the rules it touches.
SELECTOR = "selector"
# Each chart value's Params field, for tests and docs.
PARAM_OF_VALUE = {value: name for name, value in VALUES.items()}

_PLACEHOLDER = re.compile(r"__helm__([a-z]+(?:_[a-z]+)*)__")
_PROM_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.S)
_EXTRA_LABELS = "extra_labels"
_POINTS = "acceptance_drop_points"


def _placeholder(name: str) -> str:
    return f"__helm__{name}__"


def _value(name: str) -> str:
    if name in _EXPRESSIONS:
        return _EXPRESSIONS[name]
    return f"$.Values.prometheusRule.{VALUES[name] if name in VALUES else name}"


def helm_params(base: Params, *, selector: bool) -> Params:
    """`base` with every value-driven field a placeholder (and the selector too when `selector`)."""
    changes: dict[str, Any] = {name: _placeholder(name) for name in VALUES}
    changes["extra_labels"] = {_placeholder(_EXTRA_LABELS): "x"}
    if selector:
        changes["selector"] = changes["vllm_selector"] = _placeholder(SELECTOR)
    return dataclasses.replace(base, **changes)


def _escape(value: str) -> str:
    """Prometheus' own `{{ ... }}` templates pass through Helm as raw strings."""

    def raw(m: re.Match[str]) -> str:
        if "`" in m.group(0):
            raise ValueError(f"cannot escape a Prometheus template containing a backtick: {m.group(0)!r}")
        return "{{`" + m.group(0) + "`}}"

    return _PROM_TEMPLATE.sub(raw, value)


def _prepare(rule: dict[str, Any]) -> dict[str, Any]:
    """Escape Prometheus templates; in annotations the acceptance drop is shown in points (×100)."""

    def walk(value: Any, in_annotations: bool) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, in_annotations or k == "annotations") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, in_annotations) for v in value]
        if isinstance(value, str):
            value = _escape(value)
            if in_annotations:
                value = value.replace(_placeholder("acceptance_drop"), _placeholder(_POINTS))
            return value
        return value

    return walk(rule, False)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # A placeholder inside a longer string becomes a Helm expression whose output (a selector with quotes, a URL)
    # must not change how YAML reads the string: a literal block takes any text.
    embedded = _PLACEHOLDER.search(value) and not _PLACEHOLDER.fullmatch(value)
    style = "|" if embedded or "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump_rule(rule: dict[str, Any], indent: int) -> str:
    text = yaml.dump([_prepare(rule)], Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)
    pad = " " * indent
    return "\n".join(pad + line for line in text.rstrip("\n").split("\n"))


def _rule_name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record"))


def layer_groups(params: Params) -> dict[str, list[dict[str, Any]]]:
    """The rule groups of each layer, as mixin/rules.py splits them (each installable alone, as its own
    PrometheusRule: prometheusRule.layers.<layer>.enabled)."""
    return {layer: [g for doc in rule_groups(params, layer).values() for g in doc["groups"]] for layer in LAYERS}


def _substitute(text: str) -> str:
    def labels(m: re.Match[str]) -> str:
        pad = m.group(1)
        extra = "$.Values.prometheusRule.additionalRuleLabels"
        return f"{pad}{{{{- with {extra} }}}}{{{{ toYaml . | nindent {len(pad)} }}}}{{{{- end }}}}"

    text = re.sub(rf"^( *){_placeholder(_EXTRA_LABELS)}: x$", labels, text, flags=re.M)

    def whole(m: re.Match[str]) -> str:
        # A whole scalar: quoted by Helm, so a duration or a URL reads as a string whatever it holds.
        return f"{m.group(1)}{{{{ {_value(m.group(2))} | quote }}}}"

    text = re.sub(rf"^( *[\w-]+: ){_PLACEHOLDER.pattern}$", whole, text, flags=re.M)

    def inline(m: re.Match[str]) -> str:
        brace, name = m.group(1), m.group(2)
        if name == _POINTS:
            expr = f"mulf {_value('acceptance_drop')} 100"
        elif name in VALUES or name == SELECTOR:
            expr = _value(name)
        else:
            raise ValueError(f"no chart value for placeholder {m.group(0)}")
        # `{{{` would not parse: a selector's opening brace is printed by the action itself.
        return f'{{{{ print "{{" {expr} }}}}' if brace else f"{{{{ {expr} }}}}"

    return re.sub(r"(\{?)" + _PLACEHOLDER.pattern, inline, text)


def _rules_text(group: dict[str, Any], scoped_group: dict[str, Any]) -> list[str]:
    """One group's lines: each alert behind its disabledAlerts switch, each selector-dependent rule in both forms."""
    lines = [_dump_rule({k: v for k, v in group.items() if k != "rules"}, 2)]
    group_alerts = [_rule_name(r) for r in group["rules"] if "alert" in r]
    rules_line = "    rules:"
    if group_alerts and len(group_alerts) == len(group["rules"]):
        # Every alert of the group disabled leaves an empty list, which the CRD accepts and null it does not.
        every = " ".join(f'(has "{a}" $disabled)' for a in group_alerts)
        rules_line += (
            f"{{{{ if and {every} }}}} []{{{{ end }}}}"
            if len(group_alerts) > 1
            else f"{{{{ if {every} }}}} []{{{{ end }}}}"
        )
    lines.append(rules_line)
    for rule, scoped_rule in zip(group["rules"], scoped_group["rules"], strict=True):
        if _rule_name(rule) != _rule_name(scoped_rule):
            raise ValueError("the selector changed the list of rules")
        text, scoped_text = _dump_rule(rule, 4), _dump_rule(scoped_rule, 4)
        if text != scoped_text:
            text = "\n".join(
                ["{{- if $.Values.prometheusRule.selector }}", scoped_text, "{{- else }}", text, "{{- end }}"]
            )
        if "alert" in rule:
            text = "\n".join([f'{{{{- if not (has "{_rule_name(rule)}" $disabled) }}}}', text, "{{- end }}"])
        lines.append(text)
    return lines


def prometheus_rule_template(base: Params | None = None) -> str:
    """The chart's templates/prometheusrule.yaml: one PrometheusRule per rule layer."""
    base = base or Params()
    plain, scoped = layer_groups(helm_params(base, selector=False)), layer_groups(helm_params(base, selector=True))
    alerts = [_rule_name(r) for layer in LAYERS for g in plain[layer] for r in g["rules"] if "alert" in r]
    lines = [
        "{{- /*",
        "Generated by `python -m mixin` (mixin/chart.py) from mixin/rules.py: edit those, not this file.",
        "One PrometheusRule per rule layer (prometheusRule.layers): base reads vLLM's own series, exporter the",
        "exporter's. Thresholds, `for` durations, selectors, links and rule labels come from .Values.prometheusRule;",
        "with the chart's defaults the layers together render the rules in alerts/ (tests/unit/test_chart.py compares",
        "them).",
        "*/ -}}",
        "{{- if .Values.prometheusRule.enabled }}",
        "{{- $disabled := .Values.prometheusRule.disabledAlerts }}",
        "{{- $known := list " + " ".join(f'"{a}"' for a in alerts) + " }}",
        "{{- range $disabled }}",
        "{{- if not (has . $known) }}",
        '{{- fail (printf "prometheusRule.disabledAlerts: there is no alert %q; the alerts are %s" '
        '. (join ", " $known)) }}',
        "{{- end }}",
        "{{- end }}",
        "{{- $t := .Values.prometheusRule.thresholds }}",
        "{{- if gt (float64 $t.disableBelow) (float64 $t.beneficialAt) }}",
        '{{- fail (printf "prometheusRule.thresholds: disableBelow (%v) must not be above beneficialAt (%v)" '
        "$t.disableBelow $t.beneficialAt) }}",
        "{{- end }}",
    ]
    for layer in LAYERS:
        if not plain[layer]:
            continue
        lines += [
            f"{{{{- if .Values.prometheusRule.layers.{layer}.enabled }}}}",
            "---",
            "apiVersion: monitoring.coreos.com/v1",
            "kind: PrometheusRule",
            "metadata:",
            f'  name: {{{{ printf "%s-{layer}" (include "spec-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}}}',
            "  namespace: {{ .Release.Namespace }}",
            "  labels:",
            '    {{- include "spec-exporter.labels" . | nindent 4 }}',
            f"    {LAYER_LABEL}: {layer}",
            "    {{- with .Values.prometheusRule.additionalLabels }}",
            "    {{- toYaml . | nindent 4 }}",
            "    {{- end }}",
            "  {{- with .Values.prometheusRule.annotations }}",
            "  annotations:",
            "    {{- toYaml . | nindent 4 }}",
            "  {{- end }}",
            "spec:",
            "  groups:",
        ]
        for group, scoped_group in zip(plain[layer], scoped[layer], strict=True):
            lines += _rules_text(group, scoped_group)
        lines.append("{{- end }}")
    lines.append("{{- end }}")
    text = _substitute("\n".join(lines) + "\n")
    leftover = _PLACEHOLDER.search(text)
    if leftover:
        raise ValueError(f"placeholder left in the template: {leftover.group(0)}")
    return text


def mixin_template(base: Params | None = None) -> str:
    """The chart's templates/_mixin.tpl: the mixin's defaults the chart's other templates need, from one source."""
    base = base or Params()
    return "\n".join(
        [
            "{{- /* Generated by `python -m mixin` (mixin/chart.py) from mixin/params.py: edit those, not this file.",
            "The runbook URL the mixin writes into the dashboards' panel links (prometheusRule.runbookUrl replaces it",
            "in the chart's dashboard ConfigMaps). */}}",
            f'{{{{- define "spec-exporter.mixinRunbookUrl" -}}}}{base.runbook_url}{{{{- end }}}}',
            "{{- /* The mixin's selector of the exporter's scrape, for a release without a monitor of its own. */}}",
            f'{{{{- define "spec-exporter.mixinExporterJobSelector" -}}}}{base.exporter_job_selector}{{{{- end }}}}',
            "",
        ]
    )


def chart_files(dashboards: dict[str, str], base: Params | None = None) -> dict[str, str]:
    """Generated files, relative to the chart: the PrometheusRule template and a copy of every dashboard."""
    files = {RULE_TEMPLATE: prometheus_rule_template(base), MIXIN_TEMPLATE: mixin_template(base)}
    files.update({f"{DASHBOARDS}/{name}": text for name, text in sorted(dashboards.items())})
    return files


def write_chart(root: Path, dashboards: dict[str, str], base: Params | None = None) -> list[Path]:
    """Write the generated files under root/helm/spec-exporter, removing dashboards that no longer exist."""
    chart = root / CHART
    files = chart_files(dashboards, base)
    (chart / DASHBOARDS).mkdir(parents=True, exist_ok=True)
    for stale in (chart / DASHBOARDS).glob("*.json"):
        if f"{DASHBOARDS}/{stale.name}" not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = chart / name
        path.write_text(text)
        written.append(path)
    return written
