"""The monitoring mixin: generated files in sync with their source, promtool-clean, every alert tested and
documented."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mixin.dashboards import dashboards
from mixin.generate import render_rules
from mixin.params import OVERVIEW_UID, PROJECT_URL, Params
from mixin.rules import alerting_rules, recording_rules

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "alerts"


def test_committed_rule_files_are_what_the_generator_writes() -> None:
    for name, text in render_rules(Params()).items():
        assert (ALERTS / name).read_text() == text, f"alerts/{name} is stale: run `python -m mixin`"


def _unit_tests() -> list[dict]:
    return [t for p in (ALERTS / "tests").glob("*.test.yaml") for t in yaml.safe_load(p.read_text())["tests"]]


def _firing_expectations() -> list[tuple[str, dict[str, str]]]:
    return [
        (case["alertname"], alert["exp_labels"])
        for test in _unit_tests()
        for case in test.get("alert_rule_test", [])
        for alert in case.get("exp_alerts") or []
    ]


def test_every_alert_of_each_layer_has_a_firing_and_a_silent_unit_test() -> None:
    fired = {(labels["layer"], name) for name, labels in _firing_expectations()}
    silent = {c["alertname"] for t in _unit_tests() for c in t.get("alert_rule_test", []) if not c.get("exp_alerts")}
    alerts = {(r["labels"]["layer"], r["alert"]) for r in alerting_rules(Params())}
    assert alerts - fired == set(), "alerts never shown to fire"
    assert {a for _, a in alerts} - silent == set(), "alerts never shown to stay silent (inside `for`, healthy or idle)"


def test_every_alert_carries_namespace_and_pod_where_per_pod() -> None:
    # promtool compares exp_labels with the alert's labels exactly, so these are the labels the alerts carry.
    per_pod = {r["alert"] for r in alerting_rules(Params()) if "var-pod=" in r["annotations"]["dashboard_url"]}
    seen = set()
    for name, labels in _firing_expectations():
        assert labels.get("namespace"), (name, labels)
        if name in per_pod:
            assert labels.get("pod"), (name, labels)
        seen.add(name)
    assert {"SpecDecodePodAcceptanceOutlier", "SpecDecodeKVCacheSqueeze", "SpecDecodeExporterDown"} <= per_pod & seen


def test_the_base_layer_needs_no_sidecar_and_both_layers_share_names() -> None:
    base = "".join(render_rules(Params(), "base").values())
    assert "vllm:spec_decode_num_drafts_total" in base and "spec_tap_request_acceptance_rate_bucket" in base
    assert not re.findall(r"(?<![:\w])spec_decode_[a-z_]+", base), "the base layer reads the exporter's series"
    base_alerts = {r["alert"] for r in alerting_rules(Params(), "base")}
    assert {
        "SpecDecodeNetNegative",
        "SpecDecodeTemperatureBandNetNegative",
        "SpecDecodeKVCacheSqueeze",
        "SpecDecodeMetricsMissing",
        "SpecDecodePodAcceptanceOutlier",
    } <= base_alerts
    # The exporter layer's copies of base alerts each yield to the base layer's recording rules.
    for rule in alerting_rules(Params(), "exporter"):
        if rule["alert"] in base_alerts:
            assert re.search(
                r"unless on \([^)]*\) model_name(_temperature_band)?:vllm_|unless on \([^)]*\) "
                r"model_name_temperature_band:spec_tap_",
                rule["expr"],
            ), rule["alert"]


def test_no_absent_and_no_job_regex() -> None:
    text = "".join(render_rules(Params()).values())
    assert "absent(" not in text
    assert "job=~" not in text
    # vLLM's series are matched whatever their job is called, unless a parameter narrows them.
    assert "job=" not in "".join(render_rules(Params(), "base").values())
    narrowed = "".join(render_rules(Params(vllm_selector='job="vllm"'), "base").values())
    assert narrowed.count('__name__="vllm:') == narrowed.count('__name__="vllm:') and all(
        'job="vllm"' in m for m in re.findall(r"\{__name__=[^}]*\}", narrowed)
    )


def test_the_cluster_label_survives_every_aggregation() -> None:
    for params, label in ((Params(), "cluster"), (Params(cluster_label="k8s_cluster"), "k8s_cluster")):
        text = " ".join(r["expr"] for r in recording_rules(params) + alerting_rules(params))
        groupings = re.findall(r"\b(?:by|on) \(([^)]*)\)", text)
        # Every `by` and `on`, `by (le, ...)` of the quantiles included; only `ignoring` names what it drops.
        assert len(groupings) > 50
        assert [g for g in groupings if label not in g.split(", ")] == []


def test_every_alert_keeps_firing_through_a_scrape_gap() -> None:
    assert all(r["keep_firing_for"] == "10m" for r in alerting_rules(Params()))
    assert all(r["keep_firing_for"] == "3m" for r in alerting_rules(Params(keep_firing_for="3m")))


def test_every_alert_is_complete_and_has_a_runbook_section() -> None:
    runbook = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {m.lower() for m in re.findall(r"^## (\w+)", runbook, re.M)}
    for rule in alerting_rules(Params()):
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["for"], rule["alert"]
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url", "dashboard_url"} <= set(annotations)
        # Absolute, to the runbooks as published with the project: a relative link is dead in a notification.
        assert annotations["runbook_url"] == f"{PROJECT_URL}/blob/main/docs/runbooks.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in anchors, f"docs/runbooks.md lacks a section for {rule['alert']}"


def test_runbook_links_come_from_one_parameter() -> None:
    fork = "https://github.com/someone/spec-exporter-fork"
    for rule in alerting_rules(Params(project_url=fork)):
        assert rule["annotations"]["runbook_url"].startswith(fork + "/blob/main/docs/runbooks.md#"), rule["alert"]
    wiki = "https://wiki.example.org/llm/spec-exporter-runbooks"
    for rule in alerting_rules(Params(project_url=fork, runbook_url=wiki)):
        assert rule["annotations"]["runbook_url"] == f"{wiki}#{rule['alert'].lower()}"


def test_dashboard_links_open_the_overview_with_variables_it_has() -> None:
    overview = next(d for d in dashboards() if d["uid"] == OVERVIEW_UID)
    variables = {v["name"] for v in overview["templating"]["list"]}
    grafana = "https://grafana.example.org/"
    for rule in alerting_rules(Params(grafana_url=grafana)):
        url = rule["annotations"]["dashboard_url"]
        assert url.startswith(f"https://grafana.example.org/d/{OVERVIEW_UID}"), url
        # Each variable is set from a label of the alert, URL-escaped (model names carry slashes).
        for name, value in re.findall(r"var-(\w+)=([^&]*)", url):
            assert name in variables, f"{rule['alert']} sets var-{name}, which the dashboard lacks"
            assert value == f"{{{{ $labels.{name} | urlquery }}}}", url


def test_startup_budget_reaches_the_target_down_rule() -> None:
    (rule,) = [r for r in alerting_rules(Params(startup_budget="45m")) if r["alert"] == "SpecDecodeExporterTargetDown"]
    assert "[45m]" in rule["expr"] and "offset 45m" in rule["expr"] and "45m" in rule["annotations"]["description"]
    assert "20m" not in rule["expr"]


def test_load_alert_parameters_reach_the_rule() -> None:
    params = Params(slower_at_load_below=0.9, min_load_band_requests=50, for_slower_at_load="20m", exporter_window="1m")
    (rule,) = [r for r in alerting_rules(params) if r["alert"] == "SpecDecodeSlowerThanBaselineAtLoad"]
    assert "< 0.9)" in rule["expr"] and "> 50)" in rule["expr"] and rule["for"] == "20m"
    assert rule["expr"].count('window="1m"') == 2


def test_files_the_mixin_cites_are_in_the_repository() -> None:
    # The guidance the defaults come from must be readable by whoever changes them, not a file outside the repo.
    for source in (ROOT / "mixin").glob("*.py"):
        for cited in re.findall(r"(?<![\w/.])((?:[\w-]+/)*[\w-]+\.md)\b", source.read_text()):
            assert (ROOT / cited).exists(), f"{source.name} cites {cited}, not in the repository"


def test_parameters_reach_the_rules() -> None:
    fast = Params(rate_window="30s", for_net_negative="10s", disable_below=0.4, selector='namespace="x"')
    text = "".join(render_rules(fast).values())
    assert (
        "ratio_rate30s < 0.4" in text and "for: 10s" in text and 'spec_decode_draft_tokens_total{namespace="x"}' in text
    )
    assert "rate5m" not in text


def test_metric_names_in_rules_exist_in_the_catalogue() -> None:
    from spec_exporter import catalog

    exported = set()
    for spec in catalog.ALL:
        exported.add(spec.exposed_name)
        if spec.type == "histogram":
            exported |= {spec.name + "_bucket", spec.name + "_count", spec.name + "_sum"}
    text = "".join(render_rules(Params()).values())
    # Our metric names, not the recording rules built on them (level:metric:operations).
    used = set(re.findall(r"(?<![:\w])spec_decode_[a-z0-9_]+(?![:\w])", text))
    missing = used - exported
    # The base layer's spec_tap_* names are the middleware's, defined where it registers them.
    tap = set(re.findall(r"(?<![:\w])spec_tap_[a-z0-9_]+(?![:\w])", text))
    assert tap and tap <= catalog.tap_sample_names(), tap - catalog.tap_sample_names()
    assert used and not missing, missing


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_the_pod_label_is_a_parameter() -> None:
    # Bare metal has no `pod`: the rules group and name servers by `instance` instead.
    rules = alerting_rules(Params(pod_label="instance"), "base")
    (outlier,) = [r for r in rules if r["alert"] == "SpecDecodePodAcceptanceOutlier"]
    assert "{{ $labels.instance }}" in outlier["annotations"]["summary"]
    text = " ".join(r["expr"] for r in recording_rules(Params(pod_label="instance"), "base"))
    assert "cluster, namespace, instance, model_name" in text and ", pod," not in text
