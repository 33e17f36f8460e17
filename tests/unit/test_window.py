"""Reset-aware totals and windows over the snapshot ring."""

from __future__ import annotations

import math
from dataclasses import replace

from spec_exporter.types import LatencyMetric, Snapshot, TapSample, TemperatureBandSample
from spec_exporter.window import SnapshotRing, advance, window_delta
from tests.builders import KEY, engine, hist, snap


def push_all(ring: SnapshotRing, *snaps):  # type: ignore[no-untyped-def]
    return [ring.push(s) for s in snaps]


def test_a_counter_reset_is_a_restart_not_a_negative_delta_or_a_spike() -> None:
    ring = SnapshotRing(keep_seconds=600)
    points = push_all(
        ring,
        snap(0, (KEY, engine(10, 200, 100, (60, 30, 10)))),
        snap(5, (KEY, engine(15, 300, 150, (90, 45, 15)))),
        snap(10, (KEY, engine(1, 20, 10, (6, 3, 1)))),  # vLLM restarted
        snap(15, (KEY, engine(4, 80, 40, (24, 12, 4)))),
    )
    assert points[2].restarted == frozenset({KEY})
    assert points[1].restarted == frozenset()
    spec = points[-1].totals[KEY].spec
    # 0→5 adds 50/100/5, the restart step adds nothing, 10→15 adds 30/60/3.
    assert (spec.drafts, spec.draft_tokens, spec.accepted_tokens) == (8, 160, 80)
    assert spec.per_position == (30 + 18, 15 + 9, 5 + 3)
    delta = window_delta(ring.points, 60, 2.5)
    assert delta is not None and delta.span_seconds == 15
    d = delta.engines[KEY].spec
    assert d.accepted_tokens / d.draft_tokens == 0.5
    # Every step of the totals is monotone.
    totals = [p.totals[KEY].spec.accepted_tokens for p in points]
    assert totals == sorted(totals)


def test_a_restart_is_seen_in_any_counter_of_the_engine() -> None:
    before = snap(0, (KEY, engine(10, 30, 9, histograms={LatencyMetric.TTFT: hist((1, 2, 3, 4))})))
    after = snap(5, (KEY, engine(12, 36, 10, histograms={LatencyMetric.TTFT: hist((0, 1, 1, 1))})))
    point = advance(advance(None, before), after)
    assert point.restarted == frozenset({KEY})
    # The spec counters went up, but the histogram says restart: the whole engine's step is dropped.
    assert point.totals[KEY].spec.accepted_tokens == 0


def test_new_bucket_bounds_after_a_restart_start_a_new_histogram() -> None:
    ring = SnapshotRing(600)
    push_all(
        ring,
        snap(0, (KEY, engine(histograms={LatencyMetric.TTFT: hist((1, 2, 3, 3))}))),
        snap(5, (KEY, engine(histograms={LatencyMetric.TTFT: hist((2, 4, 6, 6))}))),
        snap(10, (KEY, engine(histograms={LatencyMetric.TTFT: hist((1, 1, 1), bounds=(0.5, 1.0, math.inf))}))),
        snap(15, (KEY, engine(histograms={LatencyMetric.TTFT: hist((3, 4, 5), bounds=(0.5, 1.0, math.inf))}))),
    )
    delta = window_delta(ring.points, 60, 2.5)
    h = delta.engines[KEY].histograms[LatencyMetric.TTFT]
    assert h.bounds == (0.5, 1.0, math.inf)
    assert h.counts == (2, 3, 4) and h.count == 4


def test_an_engine_first_seen_mid_window_counts_from_when_it_appeared() -> None:
    other = ("m", "1")
    ring = SnapshotRing(600)
    push_all(
        ring,
        snap(0, (KEY, engine(1, 3, 1))),
        snap(5, (KEY, engine(2, 6, 2)), (other, engine(100, 300, 200))),
        snap(10, (KEY, engine(3, 9, 3)), (other, engine(110, 330, 220))),
    )
    delta = window_delta(ring.points, 60, 2.5)
    assert delta.engines[other].spec.draft_tokens == 30
    assert delta.engines[KEY].spec.draft_tokens == 6


def test_nan_readings_add_nothing_and_do_not_poison_later_deltas() -> None:
    ring = SnapshotRing(600)
    points = push_all(
        ring,
        snap(0, (KEY, engine(1, 10, 5, generation_tokens=100))),
        snap(5, (KEY, engine(2, 20, 10, generation_tokens=math.nan))),
        snap(10, (KEY, engine(3, 30, 15, generation_tokens=200))),
        snap(15, (KEY, engine(4, 40, 20, generation_tokens=260))),
    )
    assert [p.totals[KEY].generation_tokens for p in points] == [0, 0, 0, 60]
    assert points[-1].totals[KEY].spec.draft_tokens == 30


def test_the_window_starts_at_the_oldest_point_inside_it_with_slack_for_jitter() -> None:
    ring = SnapshotRing(keep_seconds=310)
    for i in range(100):
        ring.push(snap(i * 5.0 + (0.3 if i % 2 else 0.0), (KEY, engine(i, 3 * i, i))))
    latest = ring.points[-1].taken_at
    one_minute = window_delta(ring.points, 60, 2.5)
    assert 60 - 2.5 <= one_minute.span_seconds <= 60 + 2.5
    five = window_delta(ring.points, 300, 2.5)
    assert 300 - 2.5 <= five.span_seconds <= 300 + 2.5
    # The ring keeps only what the longest window (plus margin) needs.
    assert latest - ring.points[0].taken_at <= 310
    assert five.engines[KEY].spec.draft_tokens == 3 * round(five.span_seconds / 5)


def test_a_single_point_is_an_empty_window() -> None:
    ring = SnapshotRing(600)
    ring.push(snap(0, (KEY, engine(1, 3, 1))))
    assert window_delta(ring.points, 60, 2.5) is None


def _tap(t: float, accepted: float, drafted: float, measured: float, *bands: str) -> Snapshot:
    band = TemperatureBandSample(accepted, drafted, hist((0, measured, measured, measured)))
    tap = TapSample(
        bands={("m", b): band for b in (bands or ("0",))}, requests={("0", "measured"): measured}, errors={}
    )
    return replace(snap(t, (KEY, engine())), tap=tap)


def test_the_tap_is_stitched_as_an_engine_is() -> None:
    ring = SnapshotRing(600)
    points = push_all(
        ring,
        _tap(0, 10, 20, 2),
        _tap(5, 30, 50, 5),  # +20 accepted, +30 drafted, +3 requests
        # The process holding the series restarted (tokens went down): the step adds nothing, not even the
        # requests, which already passed their old count.
        _tap(10, 4, 8, 6),
        _tap(15, 9, 18, 8, "0", "0.7-1.0"),  # +5/+10/+2; a new band counts all it holds (it started at zero)
    )
    totals = [p.tap for p in points]
    assert [t.bands[("m", "0")].accepted_tokens for t in totals] == [0, 20, 20, 25]
    assert [t.requests[("0", "measured")] for t in totals] == [0, 3, 3, 5]
    assert totals[-1].bands[("m", "0.7-1.0")].draft_tokens == 18
    assert totals[-1].bands[("m", "0")].acceptance.count == 3 + 2
    delta = window_delta(ring.points, 60, 2.5)
    assert delta is not None and delta.tap is not None
    assert delta.tap.bands[("m", "0")].draft_tokens == 30 + 10


def test_a_forgotten_ring_starts_its_windows_again_and_keeps_its_totals() -> None:
    ring = SnapshotRing(600)
    push_all(ring, snap(0, (KEY, engine(1, 3, 2))), snap(5, (KEY, engine(11, 33, 22))))
    ring.forget()
    point = ring.push(snap(10, (KEY, engine(50, 150, 100))))
    # Readings after a forget cannot be differenced with the ones before: a restart, counted from here.
    assert point.restarted == frozenset({KEY}) and point.totals[KEY].spec.draft_tokens == 30
    assert window_delta(ring.points, 60, 2.5) is None
    point = ring.push(snap(15, (KEY, engine(51, 153, 101))))
    assert point.totals[KEY].spec.draft_tokens == 33
