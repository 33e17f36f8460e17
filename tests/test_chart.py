"""The Helm chart, rendered by Helm's own library (helm-python-sdk): lint-clean, valid Kubernetes, valid
prometheus-operator objects, rules equal to alerts/, a sidecar pod that gives the exporter what it needs, and a
values schema that turns bad values away with the offending key."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from mixin.chart import CHART, PARAM_OF_VALUE, chart_files
from mixin.generate import RULE_FILES, render_rules
from mixin.params import Params
from spec_exporter import __version__
from spec_exporter.commands.serve import serve_parser, serve_settings
from spec_exporter.config import PollConfig, Settings, SpeculationConfig, TapConfig, TargetConfig
from spec_exporter.types import Thresholds

ROOT = Path(__file__).parent.parent
CHART_DIR = ROOT / CHART
CI_VALUES = sorted(CHART_DIR.glob("ci/*-values.yaml"))
CRDS = Path(__file__).parent / "fixtures" / "k8s-crds"
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


def render(chart: helm.Chart, values: dict[str, Any] | None = None, name: str = NAME) -> dict[str, str]:
    return chart.render(values or {}, name=name, namespace=NAMESPACE)


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
    return yaml.safe_load(path.read_text()) if path else {}


# --- Helm: lint and render every values file ------------------------------------------------------------------


@pytest.mark.parametrize("path", VALUE_CASES)
def test_chart_lints_clean(path: Path | None) -> None:
    report = helm.lint(CHART_DIR, load(path), strict=True)
    # Severity 1 is informational (Helm suggests an icon); warnings and errors fail.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


def test_ci_values_cover_both_modes_both_monitors_and_the_rules() -> None:
    names = {p.name.removesuffix("-values.yaml") for p in CI_VALUES}
    assert {"sidecar", "standalone", "monitoring", "monitoring-off", "custom-thresholds", "podmonitor"} <= names


@pytest.mark.parametrize("path", VALUE_CASES)
def test_rendered_core_objects_are_valid_kubernetes(chart: helm.Chart, path: Path | None) -> None:
    core = [d for d in objects(render(chart, load(path))) if not d["apiVersion"].startswith("monitoring.coreos.com")]
    assert {"Deployment", "Service", "ConfigMap"} <= {d["kind"] for d in core}
    for doc in core:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {e.path}: {e.message}")


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
    assert "relabelings" not in exporter


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


def rendered_groups(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    rule = only(objects(render(chart, values)), "PrometheusRule")
    return rule["spec"]["groups"]


def alerts_dir_groups() -> list[dict[str, Any]]:
    return [g for name in RULE_FILES.values() for g in yaml.safe_load((ROOT / "alerts" / name).read_text())["groups"]]


def mixin_groups(params: Params) -> list[dict[str, Any]]:
    return [g for text in render_rules(params).values() for g in yaml.safe_load(text)["groups"]]


def test_prometheus_rule_with_default_values_is_the_alerts_directory(chart: helm.Chart) -> None:
    groups = rendered_groups(chart, {"prometheusRule": {"enabled": True}})
    expected = alerts_dir_groups()
    # The runbook link is the one value-driven difference: the chart points at published docs, alerts/ is relative.
    base, url = Params().runbook_url, default_values()["prometheusRule"]["runbookUrl"]
    for group in expected:
        for rule in group["rules"]:
            if "annotations" in rule:
                rule["annotations"]["runbook_url"] = rule["annotations"]["runbook_url"].replace(base, url, 1)
    assert groups == expected


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
    names = [r["alert"] for g in alerts_dir_groups() for r in g["rules"] if "alert" in r]
    values = {"prometheusRule": {"enabled": True, "disabledAlerts": names}}
    rule = only(objects(render(chart, values)), "PrometheusRule")
    assert [len(g["rules"]) for g in rule["spec"]["groups"]][1] == 0
    assert not crd_errors(rule)
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
        if field == "runbook_url":
            continue
        node: Any = rule
        for key in path.split("."):
            node = node[key]
        assert node == getattr(defaults, field), f"prometheusRule.{path} differs from Params.{field}"


@pytest.mark.system
@pytest.mark.parametrize("values", ["monitoring", "custom-thresholds"])
def test_rules_in_the_rendered_prometheus_rule_pass_promtool(chart: helm.Chart, values: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package (.ci/run does)"
    spec = only(objects(render(chart, ci_values(values))), "PrometheusRule")["spec"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


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


# --- the pod: sidecar and standalone ---------------------------------------------------------------------------


def test_sidecar_pod_runs_vllm_and_the_exporter_with_the_tap_in_the_request_path(chart: helm.Chart) -> None:
    values = default_values()
    docs = objects(render(chart))
    pod = containers(docs)
    assert list(pod) == ["vllm", "exporter"]
    vllm, exporter = pod["vllm"], pod["exporter"]
    assert {p["name"]: p["containerPort"] for p in vllm["ports"]} == {"vllm": values["vllm"]["port"]}
    assert {p["name"]: p["containerPort"] for p in exporter["ports"]} == {
        "metrics": values["exporter"]["port"],
        "tap": values["tap"]["port"],
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "vllm"}
    assert exporter["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert exporter["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    ports = {p["name"]: p for p in only(docs, "Service")["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "tap" and ports["metrics"]["targetPort"] == "metrics"
    # The tap forwards to vLLM on localhost, and the exporter polls the same vLLM there.
    config = config_file(docs)
    assert config["targets"][0] == {"name": "vllm", "url": f"http://127.0.0.1:{values['vllm']['port']}"}
    assert config["tap"]["listen_address"] == f":{values['tap']['port']}" and config["tap"]["target"] == "vllm"


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
    assert not [a for a in pod["vllm"]["args"] if "per-request" in a]


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


@pytest.mark.parametrize("path", VALUE_CASES)
def test_the_exporter_accepts_its_rendered_configuration_and_flags(
    chart: helm.Chart, path: Path | None, tmp_path: Path
) -> None:
    docs = objects(render(chart, load(path)))
    exporter = containers(docs)["exporter"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_file(docs)))
    args = [a.replace("/etc/spec-exporter/config.yaml", str(config)) for a in exporter["args"]]
    settings = serve_settings(serve_parser().parse_args(args))  # raises ConfigError on anything the exporter refuses
    ports = {p["name"]: p["containerPort"] for p in exporter["ports"]}
    assert args[1] == f"--web.listen-address=:{ports['metrics']}"
    if "tap" in ports:
        assert settings.tap.listen_address == f":{ports['tap']}"
        assert settings.tap_target.name == "vllm"
    else:
        assert settings.tap.listen_address is None


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
    # The same UID as the image's USER line, so that files and runAsNonRoot agree (tests/test_image.py).
    assert exporter["runAsUser"] == exporter["runAsGroup"] == 10001
    vllm = containers(docs)["vllm"]["securityContext"]
    assert vllm["allowPrivilegeEscalation"] is False and vllm["capabilities"] == {"drop": ["ALL"]}
    mounts = containers(docs)["exporter"]["volumeMounts"]
    assert mounts == [{"name": "config", "mountPath": "/etc/spec-exporter", "readOnly": True}]


def checksum(chart: helm.Chart, values: dict[str, Any]) -> str:
    pod = only(objects(render(chart, values)), "Deployment")["spec"]["template"]
    return pod["metadata"]["annotations"]["checksum/config"]


def test_a_configuration_change_rolls_the_pods(chart: helm.Chart) -> None:
    docs = objects(render(chart))
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    digest = hashlib.sha256(configmap["data"]["config.yaml"].rstrip("\n").encode()).hexdigest()
    assert checksum(chart, {}) == digest
    assert checksum(chart, {"exporter": {"config": {"windows": ["1m", "10m"]}}}) != digest
    assert checksum(chart, {"tap": {"port": 8002}}) != digest
    assert checksum(chart, {"replicaCount": 3}) == digest


def test_image_defaults_to_the_app_version_and_a_digest_wins(chart: helm.Chart) -> None:
    assert helm.Chart.load(CHART_DIR).metadata["appVersion"] == __version__
    image = containers(objects(render(chart)))["exporter"]["image"]
    assert image == f"{default_values()['image']['repository']}:{__version__}"
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
    notes = render(chart, ci_values("standalone"))["spec-exporter/templates/NOTES.txt"]
    assert "http://vllm-router-service.llm.svc:80" in notes and "/v1" not in notes


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
    report = helm.lint(CHART_DIR, values)
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
