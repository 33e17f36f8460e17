"""What Prometheus sees: the golden /metrics for a fixed pair of real scrapes, promtool's lint, and the rules
the collector follows (no acceptance series when speculation is off, nothing derived from a dead target)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from spec_exporter.app import build_registry
from spec_exporter.types import Verdict
from tests.conftest import make_settings
from tests.standin import (
    NVIDIA_NO_SPEC,
    V032_IDLE,
    V032_LOAD,
    V085_V0,
    rewrite,
    sample,
    scale_counters,
    stretch_latency,
    with_engines,
)
from tests.tap_folds import measured, outcome

GOLDEN = Path(__file__).parent.parent / "golden"


def render(registry: CollectorRegistry) -> str:
    # build_info carries the checkout's revision and the running Python's version; pin them so the golden file is
    # the same everywhere.
    text = generate_latest(registry).decode()
    for label in ("python_version", "revision", "branch"):
        text = re.sub(label + r'="[^"]*"', label + '="X"', text)
    return text


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run `make golden` (UPDATE_GOLDEN=1 pytest tests/unit/test_exposition.py)"
    assert text == path.read_text(), f"/metrics differs from {path}; if intended, run `make golden` and review"


async def polled(standin: Any, make_poller: Any, clock: Any, *bodies: str, **overrides: Any):  # type: ignore[no-untyped-def]
    server, url = standin
    server.push(*bodies)
    poller, store = make_poller(make_settings(url, **overrides))
    for _ in bodies:
        await poller.poll_once()
        clock.advance(60)
    return store, build_registry(store, process_metrics=False)


async def test_golden_metrics_for_a_real_idle_then_loaded_vllm(standin: Any, make_poller: Any, clock: Any) -> None:
    _, registry = await polled(standin, make_poller, clock, sample(V032_IDLE), sample(V032_LOAD))
    check_golden("v0.32_idle_to_load.prom", render(registry))


async def test_golden_metrics_for_two_data_parallel_engines(standin: Any, make_poller: Any, clock: Any) -> None:
    _, registry = await polled(
        standin, make_poller, clock, with_engines(sample(V032_IDLE), 2), with_engines(sample(V032_LOAD), 2)
    )
    check_golden("v0.32_dp2_idle_to_load.prom", render(registry))


async def test_spec_decoding_off_exports_enabled_zero_and_no_acceptance(
    standin: Any, make_poller: Any, clock: Any
) -> None:
    no_spec = sample(NVIDIA_NO_SPEC)
    _, registry = await polled(standin, make_poller, clock, no_spec, scale_counters(no_spec, 2.0))
    text = render(registry)
    labels = {"target": "vllm", "model_name": "Qwen/Qwen3-4B-Instruct-2507-FP8", "engine": "0"}
    assert registry.get_sample_value("spec_decode_enabled", labels) == 0.0
    for name in (
        "spec_decode_draft_acceptance_rate",
        "spec_decode_mean_acceptance_length",
        "spec_decode_verdict",
        "spec_decode_position_acceptance_rate",
        "spec_decode_draft_tokens_total",
    ):
        assert name not in text
    # Latency is still worth having from a pool without speculation: it is the baseline.
    assert (
        registry.get_sample_value(
            "spec_decode_latency_seconds", {**labels, "window": "1m", "metric": "ttft", "quantile": "0.5"}
        )
        is not None
    )


async def test_v0_exports_its_lifetime_acceptance(standin: Any, make_poller: Any, clock: Any) -> None:
    _, registry = await polled(standin, make_poller, clock, sample(V085_V0), sample(V085_V0))
    labels = {"target": "vllm", "model_name": "meta-llama/Llama-3.1-8B-Instruct", "engine": ""}
    assert registry.get_sample_value(
        "spec_decode_draft_acceptance_rate", {**labels, "window": "lifetime"}
    ) == pytest.approx(0.49583333333333335)
    assert registry.get_sample_value("spec_decode_draft_acceptance_rate", {**labels, "window": "1m"}) is None
    assert (
        registry.get_sample_value(
            "spec_decode_verdict", {**labels, "workload": "", "temperature_band": "all", "verdict": "disable"}
        )
        == 1.0
    )


async def test_the_verdict_stateset_has_exactly_one_state_set(standin: Any, make_poller: Any, clock: Any) -> None:
    _, registry = await polled(standin, make_poller, clock, sample(V032_IDLE), sample(V032_LOAD))
    base = {"target": "vllm", "model_name": "tiny", "engine": "0", "workload": "", "temperature_band": "all"}
    values = {v: registry.get_sample_value("spec_decode_verdict", {**base, "verdict": v.value}) for v in Verdict}
    assert values == {
        Verdict.DISABLE: 1.0,
        Verdict.BREAK_EVEN: 0.0,
        Verdict.BENEFICIAL: 0.0,
        Verdict.INSUFFICIENT_DATA: 0.0,
    }


async def test_a_dead_target_keeps_only_its_health_series(standin: Any, make_poller: Any, clock: Any) -> None:
    from tests.standin import Reply

    _, registry = await polled(
        standin, make_poller, clock, sample(V032_IDLE), sample(V032_LOAD), Reply("down", status=500)
    )
    text = render(registry)
    assert registry.get_sample_value("spec_decode_exporter_target_up", {"target": "vllm"}) == 0.0
    assert (
        registry.get_sample_value("spec_decode_exporter_poll_errors_total", {"target": "vllm", "reason": "http_status"})
        == 1.0
    )
    assert "spec_decode_draft_acceptance_rate" not in text and "spec_decode_enabled" not in text
    assert registry.get_sample_value("spec_decode_exporter_last_success_timestamp_seconds", {"target": "vllm"})


async def test_baseline_comparison_is_exported(standin: Any, make_poller: Any, clock: Any, aiohttp_server: Any) -> None:
    from tests.standin import StandIn, stretch_latency

    tpot = "vllm:request_time_per_output_token_seconds"
    ttft = "vllm:time_to_first_token_seconds"
    base = StandIn()
    # The baseline pool's requests took twice as long per token and 1.5 times as long to the first token.
    base.push(*(stretch_latency(stretch_latency(sample(b), tpot, 2.0), ttft, 1.5) for b in (V032_IDLE, V032_LOAD)))
    base_server = await aiohttp_server(base.app())
    base_url = str(base_server.make_url("")).rstrip("/")
    _, spec_url = standin
    _, registry = await polled(
        standin,
        make_poller,
        clock,
        sample(V032_IDLE),
        sample(V032_LOAD),
        targets=[{"name": "spec", "url": spec_url}, {"name": "base", "url": base_url, "role": "baseline"}],
    )
    labels = {"target": "spec", "baseline": "base", "window": "1m"}
    assert registry.get_sample_value("spec_decode_baseline_tpot_speedup_ratio", labels) == pytest.approx(2.0)
    assert registry.get_sample_value(
        "spec_decode_baseline_p99_latency_ratio", {**labels, "metric": "tpot"}
    ) == pytest.approx(0.5)
    assert registry.get_sample_value(
        "spec_decode_baseline_p99_latency_ratio", {**labels, "metric": "ttft"}
    ) == pytest.approx(1 / 1.5)
    # ITL was left alone: the same on both sides.
    assert registry.get_sample_value(
        "spec_decode_baseline_p99_latency_ratio", {**labels, "metric": "itl"}
    ) == pytest.approx(1.0)
    # Both pools finished their 3 requests while no poll saw one running: load band 1 on both sides.
    band = {**labels, "load_band": "1"}
    assert registry.get_sample_value("spec_decode_baseline_load_band_tpot_speedup", band) == pytest.approx(2.0)
    assert registry.get_sample_value("spec_decode_baseline_load_band_requests", band) == 3
    for target, factor in (("spec", 1.0), ("base", 2.0)):
        at = {"target": target, "load_band": "1", "window": "1m", "metric": "tpot", "quantile": "0.5"}
        spec_p50 = registry.get_sample_value("spec_decode_load_band_latency_seconds", {**at, "target": "spec"})
        assert registry.get_sample_value("spec_decode_load_band_latency_seconds", at) == pytest.approx(
            spec_p50 * factor
        )
        requests = {"target": target, "load_band": "1", "window": "1m"}
        assert registry.get_sample_value("spec_decode_load_band_requests", requests) == 3


RUNNING = 'vllm:num_requests_running{engine="0",model_name="tiny"}'


def at_load(name: str, running: float, tpot_factor: float = 1.0) -> str:
    text = rewrite(sample(name), {RUNNING: running})
    return stretch_latency(text, "vllm:request_time_per_output_token_seconds", tpot_factor)


async def test_load_band_and_the_speedup_at_it_against_a_baseline(
    standin: Any, make_poller: Any, clock: Any, aiohttp_server: Any
) -> None:
    from tests.standin import StandIn

    # At 12 running requests the speculative pool takes twice the baseline's time per token.
    base = StandIn()
    base.push(at_load(V032_IDLE, 12), at_load(V032_LOAD, 12))
    base_url = str((await aiohttp_server(base.app())).make_url("")).rstrip("/")
    _, spec_url = standin
    _, registry = await polled(
        standin,
        make_poller,
        clock,
        at_load(V032_IDLE, 11, 2.0),
        at_load(V032_LOAD, 13, 2.0),
        targets=[{"name": "spec", "url": spec_url}, {"name": "base", "url": base_url, "role": "baseline"}],
    )
    engine = {"target": "spec", "model_name": "tiny", "engine": "0"}
    assert registry.get_sample_value("spec_decode_load_running_requests", {**engine, "window": "1m"}) == 12
    assert registry.get_sample_value("spec_decode_load_band_info", {**engine, "load_band": "9-16"}) == 1
    assert registry.get_sample_value("spec_decode_load_band_info", {**engine, "load_band": "1"}) is None
    band = {"target": "spec", "baseline": "base", "load_band": "9-16", "window": "1m"}
    assert registry.get_sample_value("spec_decode_baseline_load_band_tpot_speedup", band) == pytest.approx(0.5)
    assert registry.get_sample_value("spec_decode_baseline_load_band_requests", band) == 3
    # The baseline at the band the pool runs at is the step cost's evidence: rho = AL / 0.5, the speedup is the
    # measured one, and the verdict follows it (the acceptance policy would have said the same here, for another
    # reason: 0.374 < 0.5).
    baseline = {**engine, "window": "1m", "source": "baseline"}
    length = 1 + 55 / 49
    assert registry.get_sample_value("spec_decode_step_cost_ratio", baseline) == pytest.approx(length / 0.5)
    assert registry.get_sample_value("spec_decode_expected_speedup", baseline) == pytest.approx(0.5)
    # (rho - 1) / k = 1.08: no acceptance rate breaks even at this load, so no break-even series.
    assert registry.get_sample_value("spec_decode_break_even_acceptance_rate", baseline) is None
    prior = {**engine, "window": "1m", "source": "prior"}
    assert registry.get_sample_value("spec_decode_expected_speedup", prior) is None


async def test_an_idle_window_has_no_load_band_and_no_target_without_baseline_gets_band_latency(
    standin: Any, make_poller: Any, clock: Any
) -> None:
    _, registry = await polled(standin, make_poller, clock, sample(V032_IDLE), sample(V032_IDLE))
    text = render(registry)
    assert "spec_decode_load_band_info{" not in text and "spec_decode_load_running_requests{" not in text
    # Busy but compared with nothing: a load band, and no per-band latency that nothing would read.
    _, registry = await polled(standin, make_poller, clock, sample(V032_IDLE), sample(V032_LOAD))
    text = render(registry)
    assert 'spec_decode_load_band_info{engine="0",load_band="1"' in text
    assert "spec_decode_load_band_latency_seconds{" not in text and "spec_decode_load_band_requests{" not in text


def tap_exposition(metrics: Any, registry: CollectorRegistry) -> str:
    """What the join core's families look like on the wire after a 60/40 mix (greedy 82%, hot 38%)."""
    from spec_exporter.tap.metrics import ErrorStage, Outcome

    for _ in range(6):
        measured(metrics, "tiny", "0", 41, 50, 0.03, 0.012)
    for _ in range(4):
        measured(metrics, "tiny", "0.7-1.0", 19, 50, 0.035, 0.02)
    outcome(metrics, "tiny", "0.7-1.0", Outcome.NO_SPEC_METRICS)
    metrics.error(ErrorStage.REQUEST)
    return generate_latest(registry).decode()


async def test_golden_metrics_with_the_tap(standin: Any, make_poller: Any, clock: Any) -> None:
    from spec_exporter.tap.metrics import TapMetrics

    tap_registry = CollectorRegistry()
    metrics = TapMetrics(tap_registry)
    # The middleware's series ride vLLM's own scrape: first before any request, then after the mix.
    before = scale_counters(sample(V032_LOAD), 0.0) + generate_latest(tap_registry).decode()
    after = scale_counters(sample(V032_LOAD), 500 / 147) + tap_exposition(metrics, tap_registry)
    _, registry = await polled(standin, make_poller, clock, before, after)
    text = render(registry)
    check_golden("v0.32_with_tap.prom", text)
    band = {"target": "vllm", "model_name": "tiny", "workload": "default"}
    assert (
        registry.get_sample_value("spec_decode_request_accepted_tokens_total", {**band, "temperature_band": "0"})
        == 6 * 41
    )
    assert (
        registry.get_sample_value(
            "spec_decode_request_acceptance_rate_bucket", {**band, "temperature_band": "0.7-1.0", "le": "0.4"}
        )
        == 4
    )
    # 0.82 sits in the (0.8, 0.825] bucket: P10 of six equal requests, interpolated as histogram_quantile does.
    p10 = registry.get_sample_value(
        "spec_decode_request_acceptance_rate_quantile",
        {**band, "temperature_band": "0", "window": "1m", "quantile": "0.1"},
    )
    assert p10 == pytest.approx(0.8 + 0.025 * 0.6 / 6) and abs(p10 - 0.82) <= 0.025
    verdicts = {
        b: next(
            v
            for v in ("disable", "break_even", "beneficial", "insufficient_data")
            if registry.get_sample_value(
                "spec_decode_verdict", {**band, "engine": "", "temperature_band": b, "verdict": v}
            )
            == 1
        )
        for b in ("0", "0.7-1.0")
    }
    assert verdicts == {"0": "beneficial", "0.7-1.0": "disable"}
    # The tap saw 500 draft tokens; the engine counted 500 over the same minute.
    assert registry.get_sample_value(
        "spec_decode_tap_coverage_ratio", {"target": "vllm", "window": "1m"}
    ) == pytest.approx(1.0)
    assert (
        registry.get_sample_value(
            "spec_decode_tap_requests_total", {"target": "vllm", "temperature_band": "0.7-1.0", "outcome": "measured"}
        )
        == 4
    )
    assert registry.get_sample_value("spec_decode_tap_errors_total", {"target": "vllm", "stage": "request"}) == 1


async def test_the_proxy_taps_counts_export_exactly_as_the_middlewares(
    standin: Any, session: Any, clock: Any, wall_clock: Any
) -> None:
    """The proxy tap's registry, handed to the poller as data beside vLLM's own body, gives the golden file that the
    middleware's families inside vLLM's body give."""
    from spec_exporter.app import tap_source
    from spec_exporter.poller import Poller
    from spec_exporter.state import StateStore
    from spec_exporter.tap.metrics import TapMetrics

    tap_registry = CollectorRegistry()
    metrics = TapMetrics(tap_registry)
    server, url = standin
    server.push(scale_counters(sample(V032_LOAD), 0.0), scale_counters(sample(V032_LOAD), 500 / 147))
    settings = make_settings(url)
    store = StateStore.for_settings(settings)
    poller = Poller(
        settings,
        session,
        store,
        clock=clock,
        wall_clock=wall_clock,
        sleep=clock.sleep,
        tap_sources={"vllm": tap_source(tap_registry)},
    )
    await poller.poll_once()
    clock.advance(60)
    tap_exposition(metrics, tap_registry)
    await poller.poll_once()
    check_golden("v0.32_with_tap.prom", render(build_registry(store, process_metrics=False)))


async def test_per_band_acceptance_length_speedup_and_best_k_from_the_taps_steps_and_positions(
    standin: Any, make_poller: Any, clock: Any
) -> None:
    from spec_exporter.tap.metrics import Outcome, TapMetrics

    tap_registry = CollectorRegistry()
    metrics = TapMetrics(tap_registry)
    before = scale_counters(sample(V032_LOAD), 0.0) + generate_latest(tap_registry).decode()
    # 16 steps per request. Greedy drafts 3 a step, histogram [2, 2, 4, 8] (34 accepted); hot, under a schedule,
    # 2 a step, histogram [10, 4, 2] (8 accepted).
    for _ in range(4):
        metrics.request("tiny", "0", Outcome.MEASURED, accepted=34, drafted=48, steps=16, per_position=(14, 12, 8))
        metrics.request("tiny", "0.7-1.0", Outcome.MEASURED, accepted=8, drafted=32, steps=16, per_position=(6, 2))
    after = scale_counters(sample(V032_LOAD), 500 / 147) + generate_latest(tap_registry).decode()
    _, registry = await polled(standin, make_poller, clock, before, after)
    band = {"target": "vllm", "model_name": "tiny", "workload": "default", "window": "1m"}
    greedy, hot = {**band, "temperature_band": "0"}, {**band, "temperature_band": "0.7-1.0"}
    # AL = 1 + accepted / steps, from the band's own steps (the engine's k = 3 would say 1 + 3 * 8/32 = 1.75).
    assert registry.get_sample_value("spec_decode_request_mean_acceptance_length", greedy) == 1 + 34 / 16
    assert registry.get_sample_value("spec_decode_request_mean_acceptance_length", hot) == 1 + 8 / 16
    # Speedup at the engine's step cost (the prior here, c = 0.15), priced for the k each band drafted.
    speedup = "spec_decode_request_expected_speedup"
    assert registry.get_sample_value(speedup, {**greedy, "source": "prior"}) == pytest.approx((1 + 34 / 16) / 1.45)
    assert registry.get_sample_value(speedup, {**hot, "source": "prior"}) == pytest.approx(1.5 / 1.3)
    # Best k per band: greedy positions 0.875, 0.75, 0.5 each pay their 0.15; hot's second (0.125) does not.
    best = "spec_decode_request_recommended_num_speculative_tokens"
    assert registry.get_sample_value(best, greedy) == 3
    assert registry.get_sample_value(best, hot) == 1


async def test_two_workload_classes_in_one_band_get_their_own_acceptance_speedup_and_best_k(
    standin: Any, make_poller: Any, clock: Any
) -> None:
    """A code and a chat class at the same temperature share one band but not one number (issue 21)."""
    from spec_exporter.tap.metrics import Outcome, TapMetrics
    from spec_exporter.tap.workload import WorkloadClasses

    tap_registry = CollectorRegistry()
    metrics = TapMetrics(tap_registry, workloads=WorkloadClasses(("code", "chat"), 8))
    before = scale_counters(sample(V032_LOAD), 0.0) + generate_latest(tap_registry).decode()
    for _ in range(4):
        metrics.request(
            "tiny",
            "0.3-0.5",
            Outcome.MEASURED,
            accepted=34,
            drafted=48,
            steps=16,
            per_position=(14, 12, 8),
            workload="code",
        )
        metrics.request(
            "tiny",
            "0.3-0.5",
            Outcome.MEASURED,
            accepted=4,
            drafted=48,
            steps=16,
            per_position=(3, 1, 0),
            workload="chat",
        )
    after = scale_counters(sample(V032_LOAD), 500 / 147) + generate_latest(tap_registry).decode()
    _, registry = await polled(standin, make_poller, clock, before, after)
    band = {"target": "vllm", "model_name": "tiny", "temperature_band": "0.3-0.5"}
    code, chat = {**band, "workload": "code"}, {**band, "workload": "chat"}
    assert registry.get_sample_value("spec_decode_request_accepted_tokens_total", code) == 4 * 34
    assert registry.get_sample_value("spec_decode_request_accepted_tokens_total", chat) == 4 * 4
    w = {"window": "1m"}
    length = "spec_decode_request_mean_acceptance_length"
    assert registry.get_sample_value(length, {**code, **w}) == 1 + 34 / 16
    assert registry.get_sample_value(length, {**chat, **w}) == 1 + 4 / 16
    speedup = "spec_decode_request_expected_speedup"
    assert registry.get_sample_value(speedup, {**code, **w, "source": "prior"}) > 1
    assert registry.get_sample_value(speedup, {**chat, **w, "source": "prior"}) < 1
    best = "spec_decode_request_recommended_num_speculative_tokens"
    assert registry.get_sample_value(best, {**code, **w}) == 3
    assert registry.get_sample_value(best, {**chat, **w}) == 1
    verdict = {**band, "engine": "", "verdict": "disable"}
    assert registry.get_sample_value("spec_decode_verdict", {**verdict, "workload": "chat"}) == 1
    assert registry.get_sample_value("spec_decode_verdict", {**verdict, "workload": "code"}) == 0
