"""The base layer at fleet scale, with the real Prometheus and no exporter: 50 stand-in vLLM pods in two clusters
serve the real wire format (vLLM 0.32's /metrics with the middleware's spec_tap_* families from the tap's own
definitions), Prometheus scrapes them directly as a PodMonitor would, and evaluates only the base layer's rules.
One pod runs a bad draft (acceptance 0.20 among pods at 0.80), one pod's KV cache is full and preempting: the outlier
and squeeze alerts name those pods, nothing else fires, and every base-layer dashboard query returns data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from harness.prometheus import PrometheusStack, ScrapeJob, prometheus_stack
from harness.wait import until
from mixin.dashboards import dashboards
from mixin.generate import render_rules
from mixin.params import Params
from mixin.rules import recording_rules
from spec_exporter.tap.metrics import TapMetrics
from tests.standin import rewrite
from tests.system.scenario_vllm import ScenarioVLLM
from tests.system.test_stack import DASHBOARD_VARS, _LoopThread, _serve
from tests.tap_folds import measured
from tests.unit.test_dashboards import base_layer_queries

PODS = 50
MODEL = "llama-3.1-8b"
BAD, SQUEEZED = ("west", "vllm-30"), ("east", "vllm-7")
PARAMS = Params(
    rate_window="20s",
    baseline_window="40s",
    baseline_offset="1h",
    for_net_negative="4s",
    for_break_even="4s",
    for_band="4s",
    for_divergence="4s",
    for_drop="4s",
    for_squeeze="4s",
    for_missing="4s",
    for_outlier="4s",
    keep_firing_for="30s",
    missing_memory="2m",
)
SCRAPE = "2s"


@dataclass
class FleetPod(ScenarioVLLM):
    """A ScenarioVLLM with a KV cache and preemptions of its own, and the middleware's families on its /metrics
    (folded by the tap's own TapMetrics, so names, labels and buckets are the tap's)."""

    kv_usage: float = 0.4
    preemptions_per_second: float = 0.0
    tap_requests_per_second: float = 4.0
    _tap: TapMetrics = field(init=False)
    _registry: CollectorRegistry = field(init=False)
    _folded: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._registry = CollectorRegistry()
        self._tap = TapMetrics(self._registry)
        # As the middleware reads it from vLLM's speculative_config on the first request.
        self._tap.speculative_config(
            {
                "method": "draft_model",
                "num_speculative_tokens": "3",
                "draft_model": "llama-3.2-1b",
                "draft_sample_method": "greedy",
                "rejection_sample_method": "standard",
            }
        )

    def exposition(self) -> str:
        t = self._elapsed()
        series = f'{{engine="0",model_name="{self.model}"}}'
        text = rewrite(
            super().exposition(),
            {
                f"vllm:kv_cache_usage_perc{series}": self.kv_usage,
                f"vllm:num_preemptions_total{series}": self.preemptions_per_second * t,
            },
        )
        # Requests through the middleware as time passes: greedy and hot, both accepting like the engine does.
        while self._folded < int(t * self.tap_requests_per_second):
            band = "0" if self._folded % 3 else "0.7-1.0"
            accepted = round(60 * self.acceptance) - self._folded % 5
            measured(self._tap, self.model, band, accepted, 60, 0.05, 0.02)
            self._folded += 1
        return text.rstrip("\n") + "\n" + generate_latest(self._registry).decode()


@dataclass
class Fleet:
    prometheus: PrometheusStack
    pods: dict[tuple[str, str], FleetPod]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.prometheus.query(expr)

    def firing(self) -> list[dict[str, str]]:
        return [a["labels"] for a in self.prometheus.alerts() if a["state"] == "firing"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    pods: dict[tuple[str, str], FleetPod] = {}
    for i in range(PODS):
        cluster = "east" if i < PODS // 2 else "west"
        key = (cluster, f"vllm-{i}")
        pods[key] = FleetPod(
            MODEL,
            draft_tokens_per_second=300,
            acceptance=0.2 if key == BAD else 0.8,
            kv_usage=0.96 if key == SQUEEZED else 0.4 + (i % 5) / 20,
            preemptions_per_second=2.0 if key == SQUEEZED else 0.0,
        )
    background = _LoopThread()
    runners, addresses = [], {}
    for key, pod in pods.items():
        runner, address = background.run(_serve(pod.app()))
        runners.append(runner)
        addresses[key] = address
    # A job name no default would guess: the base layer matches vLLM's series whatever it is.
    job = ScrapeJob(
        "llm-d-decode",
        list(addresses.values()),
        {"namespace": "llm"},
        target_labels={address: {"cluster": cluster, "pod": pod} for (cluster, pod), address in addresses.items()},
    )
    try:
        with prometheus_stack(work, rules=render_rules(PARAMS, "base"), jobs=[job], interval=SCRAPE) as prometheus:
            f = Fleet(prometheus, pods)
            # Every pod scraped, then both alerts firing: events, each with a generous budget on a busy box.
            until(
                lambda: len(f.query('up{job="llm-d-decode"} == 1')) == PODS,
                120,
                "all 50 pods up",
                lambda: len(f.query('up{job="llm-d-decode"} == 1')),
            )
            wanted = {"SpecDecodePodAcceptanceOutlier", "SpecDecodeKVCacheSqueeze"}
            until(
                lambda: wanted <= {a["alertname"] for a in f.firing()},
                240,
                "the outlier and squeeze alerts to fire",
                f.firing,
            )
            yield f
    finally:
        for runner in runners:
            background.run(runner.cleanup())
        background.close()


def test_the_outlier_and_squeeze_alerts_name_the_right_pod_and_nothing_else_fires(fleet: Fleet) -> None:
    firing = fleet.firing()
    named = sorted((a["alertname"], a.get("cluster"), a.get("namespace"), a.get("pod")) for a in firing)
    assert named == [
        ("SpecDecodeKVCacheSqueeze", *SQUEEZED[:1], "llm", SQUEEZED[1]),
        ("SpecDecodePodAcceptanceOutlier", *BAD[:1], "llm", BAD[1]),
    ]
    assert all(a["layer"] == "base" and a["model_name"] == MODEL for a in firing)


def test_the_fleet_ratio_is_a_ratio_of_sums_per_cluster(fleet: Fleet) -> None:
    acceptance = {
        r["metric"]["cluster"]: float(r["value"][1])
        for r in fleet.query(f"model_name:vllm_spec_decode_acceptance:ratio_{PARAMS.rate_suffix()}")
    }
    # East: 25 pods at 0.80; west: 24 at 0.80 and one at 0.20 (equal traffic), 0.776. Clusters are not merged.
    assert set(acceptance) == {"east", "west"}
    assert acceptance["east"] == pytest.approx(0.8, abs=0.01)
    assert acceptance["west"] == pytest.approx(0.776, abs=0.01)


def test_every_base_recording_rule_evaluates(fleet: Fleet) -> None:
    # Week-ago comparisons have nothing a week ago; every other record has data.
    empty = [r["record"] for r in recording_rules(PARAMS, "base") if not fleet.query(r["record"])]
    assert empty == []


def test_every_base_layer_dashboard_query_returns_data(fleet: Fleet) -> None:
    empty = []
    queries = [q for d in dashboards(PARAMS) for q in base_layer_queries(d)]
    assert len(queries) >= 15
    for title, expr in queries:
        for var, value in DASHBOARD_VARS.items():
            expr = expr.replace(var, value)
        if not fleet.query(expr):
            empty.append((title, expr))
    assert empty == []


def test_rule_groups_evaluate_cleanly_and_report_their_time(fleet: Fleet) -> None:
    """Every base group evaluates without error over 50 pods; its evaluation times are printed for
    docs/benchmarks.md (`pytest -s`). Not asserted: a time on a shared 2-core box says little alone."""
    seen: dict[tuple[str, str], float] = {}

    def sample() -> bool:
        for group in fleet.prometheus.rules():
            assert all(r["health"] == "ok" for r in group["rules"]), [r for r in group["rules"] if r["health"] != "ok"]
            seen[(group["name"], group["lastEvaluation"])] = float(group["evaluationTime"])
        counts = {name for name, _ in seen}
        return len(counts) == 2 and all(sum(1 for n, _ in seen if n == name) >= 10 for name in counts)

    until(sample, 120, "ten evaluations of each group", lambda: sorted({n for n, _ in seen}))
    for name in sorted({n for n, _ in seen}):
        times = sorted(t for (n, _), t in seen.items() if n == name)
        median, worst = times[len(times) // 2] * 1000, times[-1] * 1000
        print(f"{name}: {len(times)} evaluations, median {median:.1f} ms, max {worst:.1f} ms")
    rules = [r for g in fleet.prometheus.rules() for r in g["rules"]]
    for rule in sorted(rules, key=lambda r: -float(r["evaluationTime"]))[:5]:
        print(f"  {rule.get('name')}: {float(rule['evaluationTime']) * 1000:.1f} ms")
