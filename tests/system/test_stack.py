"""The whole stack on loopback with the real Prometheus and Alertmanager: Prometheus scrapes the exporter, which
polls stand-in vLLMs driven through scenarios (healthy, a 60/40 temperature mix with one band at 0.38, a collapse
below 0.5, a restart, an idle pool), with the tap in front of the mixed one. Rules come from the mixin with short
windows and `for`s (parameters, not edits of the shipped files)."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from aiohttp import web

from harness.ports import free_port
from harness.processes import exporter_cmd, running
from harness.prometheus import PrometheusStack, ScrapeJob, prometheus_stack
from harness.wait import until
from mixin.dashboards import dashboards
from mixin.generate import render_rules
from mixin.params import Params
from mixin.rules import names, recording_rules
from tests.system.scenario_vllm import ScenarioVLLM

PARAMS = Params(
    rate_window="10s",
    baseline_window="20s",
    baseline_offset="30s",
    exporter_window="10s",
    for_net_negative="3s",
    for_break_even="3s",
    for_band="3s",
    for_divergence="3s",
    for_drop="3s",
    for_squeeze="3s",
    for_target_down="3s",
    for_missing="3s",
    exporter_job_selector='job="spec-exporter"',
)
# Each wait ends when its event happens; the budget only bounds a failure, generously for a busy 2-core machine.
BUDGET = 300.0
DASHBOARD_VARS = {
    # Grafana's "All" for each variable.
    "$cluster": ".*",
    "$job": ".*",
    "$engine": ".*",
    "$namespace": ".*",
    "$pod": ".*",
    "$model_name": ".*",
    "$temperature_band": ".*",
    "$workload": ".*",
    "$window": "10s",
    "$__rate_interval": "15s",
}


def _names(alerts: list[dict[str, Any]]) -> set[str]:
    return {a["labels"]["alertname"] for a in alerts}


def mixed_acceptance(temperature: float) -> float:
    # The guidance's example: greedy requests accept 82%, hot ones 38%.
    return 0.82 if temperature < 0.5 else 0.38


@dataclass
class Stack:
    prometheus: PrometheusStack
    webhook_alerts: list[dict[str, Any]]
    scenarios: dict[str, ScenarioVLLM]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.prometheus.query(expr)

    def query_range(self, expr: str, seconds: int) -> list[dict[str, Any]]:
        return self.prometheus.query_range(expr, seconds)

    def alerts(self) -> list[dict[str, Any]]:
        return self.prometheus.alerts()


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"127.0.0.1:{port}"


async def _drive_mixed_traffic(tap: str, stop: asyncio.Event) -> None:
    """A 60/40 mix of greedy and hot requests through the tap, about 20 a second."""
    import aiohttp

    rng = random.Random(7)
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            temperature = 0.0 if rng.random() < 0.6 else 0.8
            body = {"model": "mixed-model", "messages": [{"role": "user", "content": "hi"}], "temperature": temperature}
            try:
                async with session.post(f"http://{tap}/v1/chat/completions", json=body) as r:
                    await r.read()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


class _LoopThread:
    """The stand-ins, the webhook and the traffic run on their own event loop, so that the test's blocking
    waits on real servers never stall them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack")
    scenarios = {
        "healthy": ScenarioVLLM("healthy-model", draft_tokens_per_second=100, acceptance=0.8),
        "collapse": ScenarioVLLM("collapse-model", draft_tokens_per_second=100, acceptance=0.35),
        "restart": ScenarioVLLM("restart-model", draft_tokens_per_second=100, acceptance=0.7),
        "idle": ScenarioVLLM("idle-model"),
        "mixed": ScenarioVLLM("mixed-model", acceptance_by_temperature=mixed_acceptance),
        "baseline": ScenarioVLLM("healthy-model"),
    }
    background = _LoopThread()
    runners, addresses = [], {}
    for name, scenario in scenarios.items():
        runner, address = background.run(_serve(scenario.app()))
        runners.append(runner)
        addresses[name] = address

    received: list[dict[str, Any]] = []

    async def webhook(request: web.Request) -> web.Response:
        received.extend((await request.json())["alerts"])
        return web.Response()

    hook_app = web.Application()
    hook_app.router.add_post("/alerts", webhook)
    hook_runner, hook = background.run(_serve(hook_app))
    runners.append(hook_runner)

    exporter, tap = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = {
        "targets": [
            {"name": n, "url": f"http://{a}", **({"role": "baseline"} if n == "baseline" else {})}
            for n, a in addresses.items()
        ],
        "poll": {"interval": "1s", "timeout": "900ms"},
        "windows": ["5s", "10s"],
        "thresholds": {"min_draft_tokens": 20},
        "tap": {"listen_address": tap, "target": "mixed"},
    }
    (work / "exporter.yaml").write_text(yaml.safe_dump(config))
    labels = {"namespace": "llm"}
    jobs = [
        ScrapeJob("spec-exporter", [exporter], {**labels, "pod": "vllm-mixed-0"}),
        # vLLM itself, as a kube-prometheus-stack PodMonitor would scrape it: the latency rules read it.
        ScrapeJob("vllm", list(addresses.values()), labels),
    ]
    alertmanager_config = {
        "route": {
            "receiver": "hook",
            "group_by": ["alertname", "model_name", "temperature_band"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "hook", "webhook_configs": [{"url": f"http://{hook}/alerts"}]}],
    }

    stop = asyncio.Event()
    with (
        running(exporter_cmd(work / "exporter.yaml", exporter), f"http://{exporter}/readyz", work / "exporter.log"),
        prometheus_stack(
            work / "prometheus", rules=render_rules(PARAMS), jobs=jobs, alertmanager=alertmanager_config
        ) as prometheus,
    ):
        traffic = asyncio.run_coroutine_threadsafe(_drive_mixed_traffic(tap, stop), background.loop)
        s = Stack(prometheus, received, scenarios)
        # Enough history for the 10s rates, the 20s baseline window and the 3s `for`s.
        until(
            lambda: any(a["labels"]["alertname"] == "SpecDecodeNetNegative" for a in received),
            BUDGET,
            "SpecDecodeNetNegative at the webhook",
            lambda: f"{prometheus.acceptance_seen(PARAMS)}; at the webhook {sorted(_names(received))}",
        )
        until(
            lambda: s.query(names(PARAMS)["band_acceptance"]),
            BUDGET,
            "per-band acceptance",
            lambda: prometheus.acceptance_seen(PARAMS),
        )
        yield s
        background.loop.call_soon_threadsafe(stop.set)
        traffic.result(30)
    for runner in runners:
        background.run(runner.cleanup())
    background.close()


def test_the_below_half_alert_reaches_alertmanager_and_the_webhook(stack: Stack) -> None:
    fired = [a for a in stack.webhook_alerts if a["labels"]["alertname"] == "SpecDecodeNetNegative"]
    assert {a["labels"]["model_name"] for a in fired} == {"collapse-model"}
    alert = fired[0]
    assert alert["status"] == "firing" and alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook_url"].endswith("#specdecodenetnegative")
    assert re.search(
        r"Draft acceptance for collapse-model in llm is 3[45](\.\d+)?%", alert["annotations"]["description"]
    )


def test_the_mixed_workload_fires_for_the_hot_band_only(stack: Stack) -> None:
    until(
        lambda: "SpecDecodeTemperatureBandNetNegative" in _names(stack.webhook_alerts),
        BUDGET,
        "the band alert at the webhook",
        lambda: f"{stack.prometheus.acceptance_seen(PARAMS)}; at the webhook {sorted(_names(stack.webhook_alerts))}",
    )
    band = [a for a in stack.webhook_alerts if a["labels"]["alertname"] == "SpecDecodeTemperatureBandNetNegative"]
    # What a timeout of that wait would have said: the inputs of the rule, read from this Prometheus.
    seen = stack.prometheus.acceptance_seen(PARAMS)
    assert re.search(
        r"band_acceptance \{[^}]*'model_name=mixed-model,namespace=llm,temperature_band=0\.7-1\.0': 0\.3[78]", seen
    ), seen
    assert "SpecDecodeTemperatureBandNetNegative{" in seen and " firing" in seen, seen
    assert {(a["labels"]["model_name"], a["labels"]["temperature_band"]) for a in band} == {("mixed-model", "0.7-1.0")}
    # The model's own average (about 0.64) is not net-negative.
    assert not [
        a
        for a in stack.alerts()
        if a["labels"]["alertname"] == "SpecDecodeNetNegative" and a["labels"].get("model_name") == "mixed-model"
    ]


def test_healthy_and_idle_pools_fire_nothing(stack: Stack) -> None:
    quiet = {"healthy-model", "idle-model", "healthy", "idle"}
    # Firing alerts page; a pending one (one slow poll on a loaded box) does not. Alertmanager only gets firing.
    firing = [a for a in stack.alerts() if a.get("state") == "firing"]
    noisy = [
        a for a in firing + stack.webhook_alerts if {a["labels"].get("model_name"), a["labels"].get("target")} & quiet
    ]
    assert noisy == []


def _reads_the_middleware(expr: str) -> bool:
    """The base layer's per-band series come from the middleware's spec_tap_* on vLLM's /metrics; this stack runs
    the proxy tap, whose families reach Prometheus only through the exporter (tests/system/test_fleet_base.py
    covers the middleware's)."""
    return "spec_tap_" in expr


def test_every_recording_rule_evaluates(stack: Stack) -> None:
    rules = recording_rules(PARAMS)
    tap_only = _middleware_records()
    empty = [r["record"] for r in rules if r["record"] not in tap_only and not stack.query(r["record"])]
    assert empty == []
    assert tap_only and all(not stack.query(record) for record in tap_only)


def _middleware_records() -> set[str]:
    """Recording rules built (directly or through another record) on the middleware's spec_tap_*."""
    rules = recording_rules(PARAMS)
    records = {r["record"] for r in rules if _reads_the_middleware(r["expr"])}
    return records | {r["record"] for r in rules if any(t in r["expr"] for t in records)}


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    empty, middleware_only = [], []
    tap_records = _middleware_records()
    for dashboard in dashboards(PARAMS):
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in DASHBOARD_VARS.items():
                    expr = expr.replace(var, value)
                if stack.query(expr):
                    continue
                if _reads_the_middleware(expr) or any(record in expr for record in tap_records):
                    middleware_only.append(panel["title"])
                else:
                    empty.append((panel["title"], target["refId"], expr))
    # With the proxy tap the per-band panels are empty; the middleware's are checked by test_fleet_base.
    assert set(middleware_only) <= {
        "Per-request acceptance distribution",
        "Acceptance P10 / P50 / P90 by band",
        "Acceptance by band",
        "Requests through the tap",
        "Which workload pays: acceptance by workload and band",
        "Speculative configuration by pod",
    }, middleware_only
    assert empty == []


def test_a_restart_gives_no_negative_rate_and_no_spike(stack: Stack) -> None:
    scenario = stack.scenarios["restart"]
    latest_sample = 'timestamp(spec_decode_draft_tokens_total{target="restart"})'
    acceptance_5s = 'spec_decode_draft_acceptance_rate{target="restart",window="5s"}'
    # The restart follows the evidence from before it: Prometheus holding an acceptance sample of the first process.
    until(
        lambda: stack.query(acceptance_5s),
        BUDGET,
        "Prometheus to see the first process's acceptance",
        lambda: f"latest sample at {stack.prometheus.value(latest_sample)}",
    )
    scenario.restart()
    restarted_at = time.time()

    def seen_well_past_the_restart() -> bool:
        # Five polls of the restarted process, and a Prometheus sample of the exporter taken after the fifth.
        if len(scenario.scraped_after_restart) < 5:
            return False
        latest = stack.query(latest_sample)
        return bool(latest) and float(latest[0]["value"][1]) > scenario.scraped_after_restart[4]

    until(
        seen_well_past_the_restart,
        BUDGET,
        "Prometheus to see the exporter well past the restart",
        lambda: (
            f"{len(scenario.scraped_after_restart)} polls of the restarted process, at {scenario.scraped_after_restart}"
            f"; Prometheus' latest sample at {stack.prometheus.value(latest_sample)}"
        ),
    )
    rates = stack.query_range('sum(rate(spec_decode_draft_tokens_total{target="restart"}[5s]))', 30)
    values = [float(v) for _, v in rates[0]["values"]]
    # 100 draft tokens a second in, never below zero, never a burst of the pre-restart total.
    assert min(values) >= 0 and max(values) < 150, values
    # Back to a little before the restart, however long the wait after it took on a busy machine.
    acceptance = stack.query_range(acceptance_5s, int(time.time() - restarted_at) + 30)
    points = [(float(t), float(v)) for series in acceptance for t, v in series["values"]]
    # Samples from both sides of the restart, each the scenario's 0.7 (an empty answer must not pass).
    before, after = scenario.scraped_after_restart[0], scenario.scraped_after_restart[4]
    assert any(t < before for t, _ in points) and any(t > after for t, _ in points), (before, after, points)
    assert all(0.69 < v < 0.71 for _, v in points), points
    assert stack.query('spec_decode_exporter_target_up{target="restart"}')[0]["value"][1] == "1"
