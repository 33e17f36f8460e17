"""What a hostile or odd scrape does to the exported numbers: never negative, never a counter going down outside a
detected restart, never a failed scrape of ours; each kind of bad input gets its own poll-error reason."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from spec_exporter.app import build_registry
from spec_exporter.types import PollError
from spec_exporter.window import SnapshotRing, window_delta
from tests.builders import KEY, engine, snap
from tests.conftest import make_settings
from tests.standin import V032_IDLE, V032_LOAD, sample, scale_counters, with_process_start


def values(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def without(text: str, prefix: str) -> str:
    """The body with every line (samples, HELP, TYPE) of families starting with `prefix` removed."""
    return "\n".join(line for line in text.split("\n") if prefix not in line) + ("" if text.endswith("\n") else "\n")


def after(text: str, line: str, extra: str) -> str:
    """`extra` inserted right after `line`, inside its family block where a scrape would have it."""
    return text.replace(line + "\n", line + "\n" + extra, 1)


# A body for each way a scrape can lack part of what the previous one had.
GAPS = {
    "no_spec_lines": lambda text: without(text, "vllm:spec_decode"),
    "no_engine_at_all": lambda text: without(text, 'engine="0"'),
    "no_latency_histograms": lambda text: without(text, "_seconds_"),
    "no_generation_tokens": lambda text: without(text, "vllm:generation_tokens"),
}


@pytest.mark.parametrize("gap", sorted(GAPS))
async def test_a_gap_in_the_scrape_is_missing_not_zero(gap: str, standin: Any, make_poller: Any, clock: Any) -> None:
    """Issue: one scrape without the spec lines made the window restart from zero totals (−29.4 draft tokens)."""
    load = sample(V032_LOAD)
    bodies = [
        scale_counters(load, 1.0),
        scale_counters(load, 1.2),
        GAPS[gap](scale_counters(load, 1.3)),
        scale_counters(load, 1.4),
        scale_counters(load, 1.5),
    ]
    if gap == "no_engine_at_all":
        other = '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="tiny",engine="1"} 0.0\n'
        bodies[2] = without(bodies[2], "vllm:") + other
    server, url = standin
    server.push(*bodies)
    poller, store = make_poller(make_settings(url))
    registry = build_registry(store, process_metrics=False)
    history = []
    for _ in bodies:
        await poller.poll_once()
        assert store.current().targets["vllm"].up, store.current().targets["vllm"].last_error
        history.append(values(registry))
        clock.advance(5)
    for snapshot in history:
        for (name, labels), v in snapshot.items():
            assert v >= 0, f"{name}{dict(labels)} = {v}"
    # Exported counters never go down between scrapes (no restart happened).
    for before, after in itertools.pairwise(history):
        for (name, labels), v in after.items():
            if name.endswith("_total") and (name, labels) in before:
                assert v >= before[(name, labels)], f"{name}{dict(labels)} went down"
    draft = (
        "spec_decode_draft_tokens_total",
        (("engine", "0"), ("model_name", "tiny"), ("target", "vllm")),
    )
    total = float(re.search(r"vllm:spec_decode_num_draft_tokens_total\{[^}]*\} (\S+)", load).group(1))
    # Every increase from the first scrape on is counted, the gap included: 1.0 → 1.5 of the real total.
    assert history[-1][draft] == pytest.approx(0.5 * total)
    if gap == "no_spec_lines":
        # In the gap itself the acceptance series are absent, not zero.
        assert draft not in history[2]


def test_the_window_steps_over_a_missing_engine_from_its_last_reading() -> None:
    ring = SnapshotRing(600)
    ring.push(snap(0, (KEY, engine(10, 30, 20))))
    ring.push(snap(5))  # the engine is absent from this scrape
    ring.push(snap(10, (KEY, engine(14, 42, 26))))
    delta = window_delta(ring.points, 60, 2.5)
    assert delta is not None
    assert delta.engines[KEY].spec.draft_tokens == 12 and delta.engines[KEY].spec.accepted_tokens == 6


async def test_model_names_past_the_cap_fold_into_other(standin: Any, make_poller: Any, clock: Any) -> None:
    """Issue: 10,000 model_name values became 390k exported series and a 42 MB /metrics."""
    load = sample(V032_LOAD)
    (line,) = [x for x in load.split("\n") if x.startswith("vllm:spec_decode_num_draft_tokens_total")]
    extra = "".join(line.replace('model_name="tiny"', f'model_name="lora-{i}"') + "\n" for i in range(2000))
    doubled = scale_counters(load, 2.0)
    (line2,) = [x for x in doubled.split("\n") if x.startswith("vllm:spec_decode_num_draft_tokens_total")]
    server, url = standin
    server.push(after(load, line, extra), after(doubled, line2, extra))
    poller, store = make_poller(make_settings(url, poll={"interval": 5, "max_models": 10}))
    registry = build_registry(store, process_metrics=False)
    for _ in range(2):
        await poller.poll_once()
        clock.advance(5)
    text = generate_latest(registry).decode()
    models = set(re.findall(r'model_name="([^"]+)"', text))
    assert "other" in models and "tiny" in models and len(models) == 11
    assert registry.get_sample_value("spec_decode_exporter_folded_models", {"target": "vllm"}) == 2001 - 10
    assert len(text) < 200_000


async def test_a_duplicated_series_is_an_error_not_a_silent_sum(standin: Any, make_poller: Any) -> None:
    load = sample(V032_LOAD)
    line = next(x for x in load.split("\n") if x.startswith("vllm:spec_decode_num_accepted_tokens_total"))
    server, url = standin
    server.push(after(load, line, line + "\n"))
    poller, store = make_poller(make_settings(url))
    await poller.poll_once()
    state = store.current().targets["vllm"]
    assert not state.up and state.last_error is PollError.DUPLICATE_SERIES


ROUTER = """# HELP vllm:num_requests_running Number of running requests
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{server="http://10.0.0.1:8000"} 3.0
vllm:num_requests_running{server="http://10.0.0.2:8000"} 1.0
# HELP vllm:num_requests_waiting Number of waiting requests
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{server="http://10.0.0.1:8000"} 0.0
# HELP vllm:current_qps Current QPS
# TYPE vllm:current_qps gauge
vllm:current_qps{server="http://10.0.0.1:8000"} 2.5
"""


async def test_a_router_is_reported_as_not_an_engine(standin: Any, make_poller: Any) -> None:
    """Issue: production-stack's router was taken for an engine without spec counters: "speculation off"."""
    server, url = standin
    server.push(ROUTER)
    poller, store = make_poller(make_settings(url))
    await poller.poll_once()
    state = store.current().targets["vllm"]
    assert not state.up and state.last_error is PollError.NOT_AN_ENGINE
    registry = build_registry(store, process_metrics=False)
    assert "spec_decode_enabled" not in generate_latest(registry).decode()


async def test_a_service_over_several_pods_is_detected(standin: Any, make_poller: Any, clock: Any) -> None:
    """Issue: a load-balanced URL mixed the pods' counters and read every switch as a restart."""
    load = sample(V032_LOAD)
    pod_a = with_process_start(load, 1.7e9)
    pod_b = with_process_start(scale_counters(load, 3.0), 1.7e9 + 100)
    server, url = standin
    server.push(pod_a, pod_b, pod_a)
    poller, store = make_poller(make_settings(url))
    await poller.poll_once()
    clock.advance(5)
    await poller.poll_once()
    # A later start is a restart: the step adds nothing, though pod b's counters are above pod a's.
    registry = build_registry(store, process_metrics=False)
    labels = {"target": "vllm", "model_name": "tiny", "engine": "0"}
    assert registry.get_sample_value("spec_decode_draft_tokens_total", labels) == 0.0
    clock.advance(5)
    await poller.poll_once()
    state = store.current().targets["vllm"]
    assert not state.up and state.last_error is PollError.MULTIPLE_PROCESSES


async def test_a_restart_whose_counters_already_passed_the_old_ones_adds_nothing(
    standin: Any, make_poller: Any, clock: Any
) -> None:
    idle, load = sample(V032_IDLE), sample(V032_LOAD)
    server, url = standin
    server.push(with_process_start(load, 1.7e9), with_process_start(scale_counters(load, 2.0), 1.7e9 + 60))
    poller, store = make_poller(make_settings(url))
    await poller.poll_once()
    clock.advance(60)
    await poller.poll_once()
    del idle
    registry = build_registry(store, process_metrics=False)
    labels = {"target": "vllm", "model_name": "tiny", "engine": "0"}
    assert store.current().targets["vllm"].up
    assert registry.get_sample_value("spec_decode_draft_tokens_total", labels) == 0.0
