"""The poller against a stand-in vLLM: the happy path, and every way a target can misbehave."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from harness.ports import free_port
from spec_exporter.types import PollError, Verdict
from tests.conftest import make_settings
from tests.standin import V032_IDLE, V032_LOAD, Reply, rewrite, sample, scale_counters

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
