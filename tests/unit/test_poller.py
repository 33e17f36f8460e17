"""The poller against a stand-in vLLM: the happy path, and every way a target can misbehave."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from harness.ports import free_port
from spec_exporter.types import PollError, Verdict
from tests.conftest import make_settings
from tests.standin import PROCESS_START, V032_IDLE, V032_LOAD, V085_V0, Reply, rewrite, sample, scale_counters

SPEC = 'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="tiny"}'


async def test_two_polls_a_minute_apart_give_the_window_numbers(
    standin: Any, make_poller: Any, clock: Any, wall_clock: Any
) -> None:
    server, url = standin
    server.push(sample(V032_IDLE), sample(V032_LOAD))
    poller, store = make_poller(make_settings(url))
    await poller.poll_once()
    assert store.current().ready
    clock.advance(60)
    await poller.poll_once()
    t = store.current().targets["vllm"]
    assert t.up and t.ever_succeeded and t.last_success_timestamp_seconds == wall_clock.now
    e = t.health.engines[("tiny", "0")]
    assert e.windows[0].acceptance.rate == 55 / 147
    assert e.windows[0].span_seconds == 60
    assert sum(t.errors.values()) == 0


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply("oops", status=503), PollError.HTTP_STATUS),
        (Reply("<html><body>login</body></html>\n"), PollError.UNKNOWN_LAYOUT),
        (Reply(b"\xff\xfe\x00garbage\n"), PollError.PARSE_ERROR),
        (
            Reply('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} x\n'),
            PollError.PARSE_ERROR,
        ),
        (Reply(sample(V032_LOAD), cut_after=20_000), PollError.TRUNCATED),
        (Reply(sample(V032_LOAD).rstrip("\n")), PollError.TRUNCATED),
        (Reply("x" * (20 * 1024 * 1024)), PollError.BODY_TOO_LARGE),
        (Reply("x" * (20 * 1024 * 1024), chunked=True), PollError.BODY_TOO_LARGE),
        (Reply(hang=True), PollError.TIMEOUT),
    ],
    ids=[
        "http_503",
        "html",
        "not_utf8",
        "bad_value",
        "cut_connection",
        "no_final_newline",
        "huge",
        "huge_chunked",
        "hang",
    ],
)
async def test_a_bad_poll_is_counted_by_reason_and_the_next_good_one_recovers(
    standin: Any, make_poller: Any, clock: Any, reply: Reply, reason: PollError
) -> None:
    server, url = standin
    server.push(sample(V032_IDLE), reply, sample(V032_LOAD))
    # Only the hanging reply should ever hit the timeout, however loaded the machine is.
    timeout = "200ms" if reply.hang else "4s"
    settings = make_settings(url, poll={"interval": "5s", "timeout": timeout, "max_body_bytes": "1MiB"})
    poller, store = make_poller(settings)
    await poller.poll_once()
    clock.advance(5)
    with capture_logs() as logs:
        await poller.poll_once()
    t = store.current().targets["vllm"]
    assert not t.up and t.health is None and t.last_error is reason
    assert t.errors[reason] == 1 and sum(t.errors.values()) == 1
    assert [entry["event"] for entry in logs] == ["poll failed"]
    assert logs[0]["reason"] == reason.value and logs[0]["target"] == "vllm"
    server.released.set()
    clock.advance(5)
    with capture_logs() as logs:
        await poller.poll_once()
    t = store.current().targets["vllm"]
    assert t.up and t.health is not None and t.last_error is None
    assert t.errors[reason] == 1
    assert [entry["event"] for entry in logs] == ["poll recovered"]
    # The history survived the failure: the window spans both good polls.
    assert t.health.engines[("tiny", "0")].windows[0].acceptance.draft_tokens == 147


async def test_an_outage_logs_once_and_counts_every_failed_poll(make_poller: Any, clock: Any) -> None:
    poller, store = make_poller(make_settings(f"http://127.0.0.1:{free_port()}"))
    with capture_logs() as logs:
        for _ in range(3):
            await poller.poll_once()
            clock.advance(5)
    t = store.current().targets["vllm"]
    assert not t.up and not t.ever_succeeded and not store.current().ready
    assert t.errors[PollError.CONNECTION] == 3
    assert [entry["event"] for entry in logs] == ["poll failed"]


async def test_a_vllm_restart_starts_a_new_baseline(standin: Any, make_poller: Any, clock: Any) -> None:
    server, url = standin
    load = sample(V032_LOAD)
    server.push(
        load,
        scale_counters(load, 2.0),  # +147 draft tokens, +55 accepted
        sample(V032_IDLE),  # restarted: everything back to zero
        scale_counters(load, 0.5),  # after the restart: 73.5 draft tokens, 27.5 accepted
    )
    poller, store = make_poller(make_settings(url))
    with capture_logs() as logs:
        for _ in range(4):
            await poller.poll_once()
            clock.advance(5)
    assert [entry["event"] for entry in logs] == ["target restarted"]
    e = store.current().targets["vllm"].health.engines[("tiny", "0")]
    a = e.windows[0].acceptance
    assert a.draft_tokens == 147 + 73.5 and a.accepted_tokens == 55 + 27.5
    assert e.totals.spec.draft_tokens == 147 + 73.5


async def test_one_bad_target_does_not_hold_back_the_others(standin: Any, make_poller: Any) -> None:
    server, url = standin
    server.push(sample(V032_LOAD))
    settings = make_settings(
        url, targets=[{"name": "good", "url": url}, {"name": "gone", "url": f"http://127.0.0.1:{free_port()}"}]
    )
    poller, store = make_poller(settings)
    await poller.poll_once()
    state = store.current()
    assert state.targets["good"].up and not state.targets["gone"].up
    assert not state.ready


async def test_a_bug_in_a_derivation_is_contained(standin: Any, make_poller: Any, monkeypatch: Any) -> None:
    server, url = standin
    server.push(sample(V032_LOAD))
    poller, store = make_poller(make_settings(url))

    def broken(*_: Any) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("spec_exporter.poller.derive_target", broken)
    with capture_logs() as logs:
        await poller.poll_once()
    t = store.current().targets["vllm"]
    assert not t.up and t.errors[PollError.PARSE_ERROR] == 1
    assert {entry["event"] for entry in logs} == {"poll crashed", "poll failed"}


async def test_custom_thresholds_reach_the_verdict(standin: Any, make_poller: Any, clock: Any) -> None:
    server, url = standin
    server.push(sample(V032_IDLE), sample(V032_LOAD))
    settings = make_settings(url, thresholds={"disable_below": 0.3, "beneficial_at": 0.35, "min_draft_tokens": 10})
    poller, store = make_poller(settings)
    await poller.poll_once()
    clock.advance(60)
    await poller.poll_once()
    assert store.current().targets["vllm"].health.combined_verdict is Verdict.BENEFICIAL


async def test_run_loop_polls_each_interval_on_the_injected_clock(standin: Any, make_poller: Any, clock: Any) -> None:
    server, url = standin
    server.push(sample(V032_LOAD))
    poller, _ = make_poller(make_settings(url))
    started = clock.now
    sleeps: list[float] = []
    # Each poll takes 2s of the interval: the loop sleeps the rest, so polls start every 5s, not every 7s.
    server.on_request = lambda _: clock.advance(2)

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if len(sleeps) == 3:
            raise _Stop

    poller._sleep = sleep  # type: ignore[attr-defined]
    with pytest.raises(_Stop):
        await poller.run()
    assert server.served == 3 and sleeps == [3.0, 3.0, 3.0] and clock.now == started + 15


class _Stop(Exception):
    pass


def test_rewrite_only_touches_the_named_series() -> None:
    text = rewrite(sample(V032_LOAD), {SPEC: 1000})
    assert f"{SPEC} 1000.0" in text and text.count("1000.0") == 1


def exported_counters(store: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exported sample of a counter, histogram or summary total, by name and labels."""
    from spec_exporter.app import build_registry

    out = {}
    for family in build_registry(store, process_metrics=False).collect():
        if family.type in ("counter", "histogram", "summary"):
            for s in family.samples:
                if "quantile" not in s.labels:
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.parametrize("own_process_starts", [False, True], ids=["one_process_start", "the_captures_own"])
async def test_a_switch_between_the_v1_and_v0_layouts_never_brings_an_exported_counter_down(
    standin: Any, make_poller: Any, clock: Any, own_process_starts: bool
) -> None:
    """Issue 20: a body switching layouts took spec_decode_draft_tokens_total from 602.7 back to 0.

    The real V1 and V0 captures, the V0 one serving the same model name. With their own process start times the
    V0 capture's start is earlier than the V1 one's, which the poller reads as several processes behind the URL.
    """
    start = None if own_process_starts else PROCESS_START
    v1 = sample(V032_LOAD, process_start=start)
    v0 = sample(V085_V0, process_start=start).replace("meta-llama/Llama-3.1-8B-Instruct", "tiny")
    server, url = standin
    server.push(v1, scale_counters(v1, 2.0), v0, scale_counters(v1, 3.0), v0, scale_counters(v1, 4.0))
    poller, store = make_poller(make_settings(url))
    history = []
    for _ in range(6):
        await poller.poll_once()
        history.append(exported_counters(store))
        clock.advance(5)
    drafted = ("spec_decode_draft_tokens_total", (("engine", "0"), ("model_name", "tiny"), ("target", "vllm")))
    # 147 counted before the switch; a V1 body after a V0 one is another process: its step adds nothing.
    assert [h.get(drafted) for h in history] == [0.0, 147.0, None, 147.0, None, 147.0]
    last_seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for i, h in enumerate(history):
        for series, value in h.items():
            assert value >= last_seen.get(series, 0.0), f"poll {i}: {series} went from {last_seen[series]} to {value}"
            last_seen[series] = value


async def test_the_poller_derives_the_comparisons_and_drops_them_when_a_side_goes_stale(
    standin: Any, make_poller: Any, clock: Any, aiohttp_server: Any
) -> None:
    from tests.standin import StandIn

    base = StandIn()
    base.push(sample(V032_IDLE), sample(V032_LOAD), Reply("oops", status=503))
    base_url = str((await aiohttp_server(base.app())).make_url("")).rstrip("/")
    server, url = standin
    server.push(sample(V032_IDLE), sample(V032_LOAD), sample(V032_LOAD))
    targets = [{"name": "spec", "url": url}, {"name": "base", "url": base_url, "role": "baseline"}]
    poller, store = make_poller(make_settings(url, targets=targets))
    await poller.poll_once()
    clock.advance(60)
    await poller.poll_once()
    compared = store.current().comparisons
    assert {(c.target, c.baseline) for c in compared} == {("spec", "base")}
    assert next(c for c in compared if c.window == "1m").tpot_speedup == 1.0
    clock.advance(5)
    await poller.poll_once()
    # The baseline's numbers are gone with its poll: nothing is compared with stale data.
    assert not store.current().targets["base"].up and store.current().comparisons == ()


async def test_the_middleware_and_the_proxy_tap_together_fail_rather_than_count_twice(
    standin: Any, session: Any, clock: Any, wall_clock: Any
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from spec_exporter.app import tap_source
    from spec_exporter.poller import Poller
    from spec_exporter.state import StateStore
    from spec_exporter.tap.metrics import Outcome, TapMetrics

    middleware, proxy = CollectorRegistry(), CollectorRegistry()
    for registry in (middleware, proxy):
        TapMetrics(registry).request("tiny", "0", Outcome.MEASURED, accepted=3, drafted=4)
    server, url = standin
    server.push(sample(V032_LOAD) + generate_latest(middleware).decode())
    settings = make_settings(url)
    store = StateStore.for_settings(settings)
    for taps, up in (({}, True), ({"vllm": tap_source(proxy)}, False)):
        poller = Poller(settings, session, store, clock=clock, wall_clock=wall_clock, tap_sources=taps)
        await poller.poll_once()
        state = store.current().targets["vllm"]
        assert state.up is up
    assert state.last_error is PollError.DUPLICATE_SERIES
