"""The Prometheus stack on loopback: Prometheus with given rule files and scrape jobs, and optionally an Alertmanager
it sends to. The demo, the system tier and the real tier start it here, and only here.

    with prometheus_stack(work, rules=render_rules(params), jobs=[ScrapeJob("spec-exporter", [exporter])]) as prom:
        prom.query("spec_decode_enabled"); prom.firing("SpecDecodeNetNegative")

Ready means ready through the HTTP APIs, not "the port answers": Prometheus has loaded every rule group it was
given and, with an Alertmanager, has discovered it, so the first alert that fires is sent.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.ports import free_port
from harness.processes import alertmanager_cmd, binary, prometheus_cmd, running
from harness.wait import until
from mixin.params import Params
from mixin.rules import names
from spec_exporter.config import parse_duration

__all__ = ["PrometheusStack", "ScrapeJob", "prometheus_stack"]


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    # host:port of each target.
    targets: Sequence[str]
    # Target labels, as a ServiceMonitor's relabelling would add them (e.g. namespace).
    labels: Mapping[str, str] = field(default_factory=dict)
    # Labels of single targets on top of `labels`, by target, as a PodMonitor adds each pod's own (e.g. pod).
    target_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # More of the job's scrape_config: scheme, tls_config, basic_auth.
    settings: Mapping[str, Any] = field(default_factory=dict)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body.get("status", "success") == "success", body
    return body


@dataclass(frozen=True)
class PrometheusStack:
    # http://host:port of each; alertmanager is None when the stack has none.
    prometheus: str
    alertmanager: str | None
    work: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = _get_json(
            f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        )["data"]["result"]
        return result

    def value(self, expr: str) -> dict[str, float]:
        """An instant query as {label set (k=v,... sorted): value}, for failure messages and simple checks."""
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k != "__name__"): float(r["value"][1])
            for r in self.query(expr)
        }

    def query_range(self, expr: str, seconds: int) -> list[dict[str, Any]]:
        now = time.time()
        params = {"query": expr, "start": now - seconds, "end": now, "step": "1"}
        result: list[dict[str, Any]] = _get_json(
            f"{self.prometheus}/api/v1/query_range?" + urllib.parse.urlencode(params)
        )["data"]["result"]
        return result

    def targets(self) -> dict[str, dict[str, Any]]:
        """The active scrape targets by job (one target per job), with their health and last error."""
        active = _get_json(f"{self.prometheus}/api/v1/targets")["data"]["activeTargets"]
        return {t["labels"]["job"]: t for t in active}

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups, each with its rules' health and its evaluation times."""
        groups: list[dict[str, Any]] = _get_json(f"{self.prometheus}/api/v1/rules")["data"]["groups"]
        return groups

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' pending and firing alerts."""
        alerts: list[dict[str, Any]] = _get_json(f"{self.prometheus}/api/v1/alerts")["data"]["alerts"]
        return alerts

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if a["labels"]["alertname"] == alertname and a["state"] == "firing"]

    def acceptance_seen(self, params: Params) -> str:
        """What the acceptance alerts read (model and band acceptance and draft rates) and the alerts' states, for
        the failure message of a wait on one of them."""
        n = names(params)
        read = "; ".join(
            f"{key} {self.value(n[key])}" for key in ("acceptance", "draft_rate", "band_acceptance", "band_draft_rate")
        )
        return f"{read}; alerts {self.alert_states()}"

    def alert_states(self) -> list[str]:
        """Every pending or firing alert in one line each, for a failure message."""
        out = []
        for a in self.alerts():
            labels = ",".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k not in ("alertname", "severity"))
            out.append(f"{a['labels']['alertname']}{{{labels}}} {a['state']}")
        return sorted(out)


def _rules_loaded(prometheus: PrometheusStack, groups: int) -> bool:
    try:
        return len(prometheus.rules()) >= groups
    except OSError:
        return False


def _alertmanager_discovered(prometheus: str) -> bool:
    try:
        return bool(_get_json(f"{prometheus}/api/v1/alertmanagers")["data"]["activeAlertmanagers"])
    except OSError:
        return False


@contextlib.contextmanager
def prometheus_stack(
    work: Path,
    *,
    rules: Mapping[str, str],
    jobs: Sequence[ScrapeJob],
    alertmanager: Mapping[str, Any] | None = None,
    interval: str = "1s",
    prometheus_port: int | None = None,
    alertmanager_port: int | None = None,
    timeout: float = 120.0,
) -> Iterator[PrometheusStack]:
    """Start Prometheus (and Alertmanager, with `alertmanager` as its configuration) in `work`, wait until both
    are ready through their APIs, stop both afterwards.

    `rules` maps file name to rule-file text (mixin.generate.render_rules); promtool (and amtool for the
    Alertmanager configuration) checks them first, so a broken file fails here with promtool's message rather than
    as an alert that never fires. Scrapes and evaluations every `interval`; the scrape timeout just under it. The
    TSDB is `work/tsdb`: blocks backfilled there beforehand are served."""
    work.mkdir(parents=True, exist_ok=True)
    for name, text in rules.items():
        (work / name).write_text(text)
    rule_files = [str(work / name) for name in rules]
    if rule_files:
        _check([binary("promtool"), "check", "rules", *rule_files])
    prom = f"127.0.0.1:{prometheus_port or free_port()}"
    seconds = float(parse_duration(interval))
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": f"{int(seconds * 900)}ms",
        },
        "rule_files": rule_files,
        "scrape_configs": [
            {
                "job_name": job.name,
                "static_configs": _static_configs(job),
                **job.settings,
            }
            for job in jobs
        ],
    }
    with contextlib.ExitStack() as stack:
        am = None
        if alertmanager is not None:
            am = f"127.0.0.1:{alertmanager_port or free_port()}"
            (work / "alertmanager.yml").write_text(yaml.safe_dump(dict(alertmanager)))
            _check([binary("amtool"), "check-config", str(work / "alertmanager.yml")])
            stack.enter_context(
                running(
                    alertmanager_cmd(work / "alertmanager.yml", work / "am", am, binary("prometheus-alertmanager")),
                    f"http://{am}/-/ready",
                    work / "alertmanager.log",
                    timeout=timeout,
                )
            )
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [am]}]}]}
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = work / "prometheus.log"
        stack.enter_context(
            running(
                prometheus_cmd(work / "prometheus.yml", work / "tsdb", prom, binary("prometheus")),
                f"http://{prom}/-/ready",
                log,
                timeout=timeout,
            )
        )
        url = f"http://{prom}"
        started = PrometheusStack(url, f"http://{am}" if am else None, work)
        groups = sum(len(yaml.safe_load(text)["groups"]) for text in rules.values())
        tail = lambda: log.read_text()[-3000:]  # noqa: E731
        until(lambda: _rules_loaded(started, groups), timeout, f"Prometheus to load its {groups} rule groups", tail)
        if am is not None:
            until(lambda: _alertmanager_discovered(url), timeout, "Prometheus to discover its Alertmanager", tail)
        yield started


def _static_configs(job: ScrapeJob) -> list[dict[str, Any]]:
    """One group of the targets that share the job's labels, and one per target with labels of its own."""
    shared = [t for t in job.targets if t not in job.target_labels]
    groups = [(shared, dict(job.labels))] if shared else []
    groups += [([t], {**job.labels, **job.target_labels[t]}) for t in job.targets if t in job.target_labels]
    return [{"targets": targets, **({"labels": labels} if labels else {})} for targets, labels in groups]


def _check(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{result.stdout}{result.stderr}")
