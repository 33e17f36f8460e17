"""Dashboards: generated from mixin/dashboards.py, valid against Grafana's own schema, and built only from
metrics the exporter (or its recording rules) provide."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mixin.dashboards import VERDICT_WORDS, dashboards
from mixin.generate import render_dashboards
from mixin.params import OVERVIEW_UID, PROJECT_URL, Params
from spec_exporter import catalog
from spec_exporter.derive.verdict import Verdict

ROOT = Path(__file__).parents[2]
GRAFANA_SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "grafana" / "dashboard.schema.json").read_text())
# @grafana/schema's AnnotationQuery has no room for a Prometheus annotation's query: the generated type says "TODO..
# this should just be a normal query target" and closes the object. Grafana's Prometheus data source reads these
# six fields (grafana-foundation-sdk's AnnotationQuery lists them: expr, textFormat, titleFormat, tagKeys, step,
# useValueForTime), so they, and nothing else, are added here.
PROMETHEUS_ANNOTATION_FIELDS = {
    "expr": {"type": "string"},
    "textFormat": {"type": "string"},
    "titleFormat": {"type": "string"},
    "tagKeys": {"type": "string"},
    "step": {"type": "string"},
    "useValueForTime": {"type": "boolean"},
}
SCHEMA = copy.deepcopy(GRAFANA_SCHEMA)
SCHEMA["definitions"]["AnnotationQuery"]["properties"].update(PROMETHEUS_ANNOTATION_FIELDS)


def exprs(dashboard: dict[str, Any]) -> list[str]:
    panels = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return panels + [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]


def overview(params: Params | None = None) -> dict[str, Any]:
    return next(d for d in dashboards(params) if d["uid"] == OVERVIEW_UID)


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in dashboard["panels"] if p["title"] == title)


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    rendered = render_dashboards()
    assert sorted(rendered) == sorted(p.name for p in (ROOT / "dashboards").glob("*.json"))
    for name, text in rendered.items():
        assert (ROOT / "dashboards" / name).read_text() == text, f"dashboards/{name} is stale: run `python -m mixin`"


@pytest.mark.parametrize("dashboard", dashboards(), ids=lambda d: d["uid"])
def test_valid_against_grafanas_dashboard_schema(dashboard: dict[str, Any]) -> None:
    errors = sorted(jsonschema.Draft7Validator(SCHEMA).iter_errors(dashboard), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_schema_check_catches_a_broken_dashboard() -> None:
    broken = dashboards()[0] | {"panels": [{"type": "timeseries", "gridPos": {"h": "tall"}}]}
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(broken))


def test_the_schema_is_grafanas_but_for_the_prometheus_annotation_fields() -> None:
    dashboard = overview()
    strict = [e for e in jsonschema.Draft7Validator(GRAFANA_SCHEMA).iter_errors(dashboard)]
    # Only the annotations differ, and only by those fields: an unknown one is still refused.
    assert strict and all(list(e.absolute_path)[:1] == ["annotations"] for e in strict)
    typo = copy.deepcopy(dashboard)
    typo["annotations"]["list"][1]["exprr"] = "up"
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(typo))


@pytest.mark.parametrize("dashboard", dashboards(), ids=lambda d: d["uid"])
def test_conventions(dashboard: dict[str, Any]) -> None:
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert variables[0] == "datasource"
    assert {"namespace", "pod", "model_name", "temperature_band"} <= set(variables)
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["description"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for expr in exprs(dashboard):
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", expr


def test_queries_use_only_exported_metrics() -> None:
    exported = set()
    for spec in catalog.ALL:
        exported.add(spec.exposed_name)
        if spec.type in ("histogram", "summary"):
            exported |= {spec.name + "_bucket", spec.name + "_count", spec.name + "_sum"}
    used = {m for d in dashboards() for e in exprs(d) for m in re.findall(r"\bspec_decode_[a-z0-9_]+", e)}
    missing = used - exported
    assert used and not missing, missing


# --- units: what a panel shows must read as what it is --------------------------------------------------------


def _kind(metric: str) -> str | None:
    """The quantity an exporter gauge holds, from its name (counters and histograms are read through rate())."""
    if metric.endswith(("_total", "_bucket", "_count", "_sum")):
        return None
    if metric.endswith("_seconds"):
        return "seconds"
    if metric.endswith("_per_second"):
        return "per_second"
    if metric.endswith(("_ratio", "_acceptance_rate", "_speedup")):
        return "ratio"
    if metric.endswith(("_target_up", "_enabled", "_info")):
        return "state"
    return None


def test_no_panel_mixes_quantities_and_rates_are_not_percentages() -> None:
    for p in panels(overview()):
        metrics = {m for t in p.get("targets", []) for m in re.findall(r"\bspec_decode_[a-z0-9_]+", t["expr"])}
        kinds = {k for m in metrics if (k := _kind(m))}
        assert len(kinds) <= 1, f"{p['title']!r} mixes {sorted(kinds)} on one axis"
        unit = p["fieldConfig"]["defaults"]["unit"]
        if "per_second" in kinds:
            assert unit != "percentunit", f"{p['title']!r}: 2/s would read as 200%"
        if "seconds" in kinds:
            assert unit == "s", p["title"]
        if "state" in kinds and p["type"] != "stat":
            assert p["fieldConfig"]["defaults"].get("mappings"), f"{p['title']!r}: 0/1 without words"


def test_preemptions_and_exporter_health_have_panels_of_their_own() -> None:
    dashboard = overview()
    assert panel(dashboard, "Preemptions per second")["fieldConfig"]["defaults"]["unit"] == "suffix:/s"
    up = panel(dashboard, "Exporter: targets up")
    assert [m["options"] for m in up["fieldConfig"]["defaults"]["mappings"]] == [
        {"0": {"text": "down", "color": "red", "index": 0}, "1": {"text": "up", "color": "green", "index": 1}}
    ]
    assert panel(dashboard, "Exporter: poll duration")["fieldConfig"]["defaults"]["unit"] == "s"


def test_verdict_table_shows_words_and_colours() -> None:
    table = panel(overview(), "Verdict by model and temperature band")
    (mapping,) = table["fieldConfig"]["defaults"]["mappings"]
    assert mapping["type"] == "value"
    # Every verdict the exporter can emit has a word and a colour; no raw label values, no Value/Time columns.
    assert set(mapping["options"]) == {v.value for v in Verdict} == set(VERDICT_WORDS)
    assert all(o["text"] and o["color"] for o in mapping["options"].values())
    (organize,) = [t for t in table["transformations"] if t["id"] == "organize"]
    assert organize["options"]["excludeByName"] == {"Time": True, "Value": True}
    verdict_column = organize["options"]["renameByName"]["verdict"]
    (override,) = table["fieldConfig"]["overrides"]
    assert override["matcher"] == {"id": "byName", "options": verdict_column}
    assert {"id": "custom.cellOptions", "value": {"type": "color-background"}} in override["properties"]


# --- variables, annotations, links ------------------------------------------------------------------------------


def test_multi_cluster_variables() -> None:
    dashboard = overview()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("cluster", "job", "engine"):
        v = variables[name]
        # "All" is `.*`, which also matches a series without the label: no cluster label, V0's empty engine.
        assert v["includeAll"] and v["allValue"] == ".*", name
    # Every query is scoped by cluster; the exporter's by its job too (vLLM's own are read whatever their job).
    for p in panels(dashboard):
        for t in p["targets"]:
            assert 'cluster=~"$cluster"' in t["expr"], (p["title"], t["expr"])
            if re.search(r"(?<![:\w])spec_decode_", t["expr"]):
                assert 'job=~"$job"' in t["expr"], (p["title"], t["expr"])
            else:
                assert "job=" not in t["expr"], (p["title"], t["expr"])


def base_layer_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel, expr) of every query that needs no sidecar: vLLM's series, spec_tap_* and base recording rules."""
    return [
        (p["title"], t["expr"])
        for p in panels(dashboard)
        for t in p["targets"]
        if not re.search(r"(?<![:\w])spec_decode_", t["expr"])
    ]


def test_the_base_layer_carries_the_dashboard_and_reads_its_recording_rules() -> None:
    from mixin.rules import recording_rules

    dashboard = overview()
    base = base_layer_queries(dashboard)
    titles = {title for title, _ in base}
    for needed in (
        "Draft acceptance rate",
        "Pods",
        "Acceptance P10 / P50 / P90 by band",
        "TTFT p50 / p95 / p99",
        "TPOT p50 / p95 / p99",
        "ITL p50 / p95 / p99",
        "KV-cache usage",
        "Preemptions per second",
    ):
        assert needed in titles, needed
    records = {r["record"] for r in recording_rules(Params(), "base")}
    used = {m for _, e in base for m in re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", e)}
    assert used and used <= records, used - records
    # Fleet percentiles come from the recording rules, never a max of per-pod quantiles, and the per-band ones are
    # the base layer's (computed once from the tap's fine buckets), not recomputed from a coarser re-export.
    every = [t["expr"] for p in panels(dashboard) for t in p["targets"]]
    assert not [e for e in every if "histogram_quantile" in e or "spec_decode_latency_seconds" in e]
    assert not [e for e in every if "spec_decode_request_acceptance_rate" in e]


def test_the_pod_table_has_a_column_per_question() -> None:
    table = panel(overview(), "Pods")
    (organize,) = [t for t in table["transformations"] if t["id"] == "organize"]
    columns = set(organize["options"]["renameByName"].values())
    assert {"Acceptance", "Acceptance length", "TPOT p99", "KV cache", "Verdict", "Pod"} <= columns
    assert all(t.get("instant") and t.get("format") == "table" for t in table["targets"])


def test_annotations_mark_restarts_config_changes_and_alerts() -> None:
    annotations = {a["name"]: a for a in overview()["annotations"]["list"]}
    assert "process_start_time_seconds" in annotations["vLLM restarts"]["expr"]
    assert "changes(spec_decode_num_speculative_tokens{" in annotations["Speculation config changed"]["expr"]
    assert 'ALERTS{alertname=~"SpecDecode.*", alertstate="firing"' in annotations["Spec-decode alerts"]["expr"]
    assert all(a["enable"] for a in annotations.values())


def test_panels_link_to_their_runbook_sections() -> None:
    runbook = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {m.lower() for m in re.findall(r"^## (\w+)", runbook, re.M)}
    linked = [link for p in panels(overview()) for link in p.get("links", [])]
    assert len(linked) >= 10
    for link in linked:
        base, anchor = link["url"].split("#")
        assert base == f"{PROJECT_URL}/blob/main/docs/runbooks.md" and anchor in anchors, link
    # From the same parameter as the alerts' runbook_url.
    fork = "https://github.com/someone/fork"
    for p in panels(overview(Params(project_url=fork))):
        for link in p.get("links", []):
            assert link["url"].startswith(fork + "/blob/main/docs/runbooks.md#"), link
    # Every alert is explained by some panel.
    from mixin.rules import alerting_rules

    explained = {link["url"].split("#")[1] for link in linked}
    assert {r["alert"].lower() for r in alerting_rules(Params())} - explained == {"specdecodemetricsmissing"}


# --- the queries, run by Prometheus' own engine with Grafana's "All" and single-value substitutions -------------

ALL = {"cluster": ".*", "job": ".*", "namespace": ".*", "pod": ".*", "model_name": ".*", "engine": ".*"}


def _grafana(expr: str, **values: str) -> str:
    """The query Grafana sends: variables substituted, $__rate_interval a concrete window."""
    for name, value in {**ALL, "temperature_band": ".*", "workload": ".*", "window": "5m", **values}.items():
        expr = expr.replace(f"${name}", value)
    return expr.replace("$__rate_interval", "5m")


def test_the_workload_variable_selects_the_tap_classes_on_every_panel_that_has_them() -> None:
    """The request class (issue 21) is a variable read from the tap's own series, and every query of a series that
    carries `workload` narrows by it: the "which workload pays" panels, from the base layer and the exporter."""
    from mixin.rules import names

    dashboard = overview()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    workload = variables["workload"]
    assert "spec_tap_requests_total" in workload["query"]["query"] and workload["query"]["query"].endswith("workload)")
    assert workload["includeAll"] and workload["allValue"] == ".*"
    by_class = names(Params())["workload_acceptance"]
    exprs = {t["expr"] for p in panels(dashboard) for t in p["targets"]}
    classed = [e for e in exprs if by_class in e or "spec_decode_request_expected_speedup" in e]
    assert any(by_class in e for e in classed) and any("request_expected_speedup" in e for e in classed)
    assert all('workload=~"$workload"' in e for e in classed), classed
    titles = {p["title"] for p in panels(dashboard)}
    assert {t for t in titles if t.startswith("Which workload pays")} == {
        "Which workload pays: acceptance by workload and band",
        "Which workload pays: speedup by workload and band at the current load",
    }


def test_the_speculative_configuration_is_shown_per_pod() -> None:
    """What decides acceptance besides temperature (issue 21): the method, k, draft and verification, per pod, from
    the middleware's info series on vLLM's /metrics (base layer: no sidecar), every label a column."""
    from spec_exporter.tap import speculative

    table = panel(overview(), "Speculative configuration by pod")
    (target,) = table["targets"]
    assert "spec_tap_speculative_config_info" in target["expr"] and target["format"] == "table"
    assert all(label in target["expr"] for label in speculative.LABELS)
    (organize,) = [t for t in table["transformations"] if t["id"] == "organize"]
    assert set(speculative.LABELS) <= organize["options"]["renameByName"].keys()
