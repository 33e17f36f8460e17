"""Load and k derivations, by hand: effective k, speculated share, the best k, speedup from length, load bands."""

from __future__ import annotations

import dataclasses
import math

import pytest

from spec_exporter.derive.latency import histogram_quantile
from spec_exporter.derive.load import (
    compare_load_bands,
    effective_k,
    load_band,
    load_band_latency,
    speculated_share,
    window_load,
    window_points,
)
from spec_exporter.types import EngineSample, LatencyMetric
from spec_exporter.window import Point, SnapshotRing, window_delta
from tests.builders import KEY, engine, hist, snap
from tests.load_oracle import histograms_by_load_band, intervals

ITL, TPOT = LatencyMetric.ITL, LatencyMetric.TPOT


def busy(sample: EngineSample, running: float | None) -> EngineSample:
    return dataclasses.replace(sample, requests_running=running)


def ring_of(*snaps) -> list[Point]:  # type: ignore[no-untyped-def]
    ring = SnapshotRing(keep_seconds=3600)
    for s in snaps:
        ring.push(s)
    return list(ring.points)


def test_effective_k_and_speculated_share_from_window_deltas() -> None:
    # 100 drafts of 250 tokens: a schedule drafting 3 at low batch and 2 at high batch gives k = 2.5, not 3.
    points = ring_of(
        snap(0, (KEY, engine(10, 30, 15, histograms={ITL: hist((0, 0, 0, 40))}))),
        snap(10, (KEY, engine(110, 280, 140, histograms={ITL: hist((0, 0, 0, 440))}))),
    )
    d = window_delta(points, 60, 2.5).engines[KEY]
    assert effective_k(d.spec) == 2.5
    # 400 (request, decode step) pairs observed an ITL; 100 of them had drafts.
    assert speculated_share(d.spec.drafts, d.histograms[ITL].count) == 0.25
    assert effective_k(dataclasses.replace(d.spec, drafts=0, draft_tokens=0)) is None
    assert speculated_share(0, 0) is None


def test_load_bands_round_to_whole_batch_sizes() -> None:
    cases = {0.2: "1", 1.49: "1", 1.5: "2-4", 4.49: "2-4", 4.5: "5-8", 8: "5-8", 9: "9-16", 16.4: "9-16"}
    cases |= {17: "17-32", 32: "17-32", 33: "33-64", 64.4: "33-64", 64.5: "65+", 400: "65+"}
    assert {r: load_band(r) for r in cases} == cases


def test_load_is_the_time_weighted_mean_of_busy_intervals_across_polls() -> None:
    tokens = iter(range(0, 10_000, 100))
    readings = [(0, 0), (5, 4), (10, 6), (15, 6), (25, 0), (30, 0), (35, 0)]  # poll at 20 was missed
    points = ring_of(*(snap(t, (KEY, busy(engine(generation_tokens=next(tokens)), r))) for t, r in readings[:5]))
    # Then two idle polls: nothing running, no tokens.
    last = points[-1].snapshot.engines[KEY].generation_tokens
    points = ring_of(
        *(p.snapshot for p in points),
        *(snap(t, (KEY, busy(engine(generation_tokens=last), r))) for t, r in readings[5:]),
    )
    spans = intervals(points, [KEY])
    assert [(i.seconds, i.running) for i in spans] == [(5, 2), (5, 5), (5, 6), (10, 3), (5, None), (5, None)]
    load = window_load(spans)
    assert load.mean_running == (5 * 2 + 5 * 5 + 5 * 6 + 10 * 3) / 25
    assert load.band == "2-4" and load.busy_seconds == 25 and load.span_seconds == 35


def test_work_between_polls_that_saw_nothing_running_is_one_request_and_no_work_is_idle() -> None:
    short = ring_of(
        snap(0, (KEY, busy(engine(generation_tokens=0), 0))),
        snap(5, (KEY, busy(engine(generation_tokens=30), 0))),
    )
    assert window_load(intervals(short, [KEY])).band == "1"
    idle = ring_of(
        snap(0, (KEY, busy(engine(generation_tokens=30), 0))),
        snap(5, (KEY, busy(engine(generation_tokens=30), 0))),
    )
    load = window_load(intervals(idle, [KEY]))
    assert load.mean_running is None and load.band is None and load.span_seconds == 5


def test_load_is_per_engine_across_engines() -> None:
    other = ("m", "1")
    points = ring_of(
        snap(0, (KEY, busy(engine(), 10)), (other, busy(engine(), 2))),
        snap(5, (KEY, busy(engine(), 10)), (other, busy(engine(), 2))),
    )
    assert window_load(intervals(points, [KEY, other])).mean_running == 6
    assert window_load(intervals(points, [other])).band == "2-4"


def test_a_restart_inside_a_window_adds_nothing_for_its_step_and_keeps_the_load() -> None:
    points = ring_of(
        snap(0, (KEY, busy(engine(10, 30, 15, generation_tokens=100, histograms={ITL: hist((0, 0, 0, 40))}), 4))),
        snap(5, (KEY, busy(engine(50, 150, 75, generation_tokens=300, histograms={ITL: hist((0, 0, 0, 200))}), 4))),
        # vLLM restarted: every counter starts again from 0.
        snap(10, (KEY, busy(engine(4, 8, 2, generation_tokens=10, histograms={ITL: hist((0, 0, 0, 20))}), 2))),
        snap(15, (KEY, busy(engine(24, 48, 12, generation_tokens=90, histograms={ITL: hist((0, 0, 0, 100))}), 2))),
    )
    assert points[2].restarted == frozenset({KEY})
    d = window_delta(points, 60, 2.5).engines[KEY]
    # 0→5 adds 40 drafts / 120 tokens, the restart step nothing, 10→15 adds 20 drafts / 40 tokens.
    assert (d.spec.drafts, d.spec.draft_tokens) == (60, 160)
    assert effective_k(d.spec) == 160 / 60
    assert speculated_share(d.spec.drafts, d.histograms[ITL].count) == 60 / (160 + 80)
    spans = intervals(points, [KEY])
    # The restart interval's readings still say how many requests ran; its counters add nothing.
    assert [i.running for i in spans] == [4, 3, 2]
    assert [i.histograms[ITL].count for i in spans] == [160, 0, 80]
    assert window_load(spans).band == "2-4"


def test_window_points_span_what_window_delta_spans() -> None:
    points = ring_of(*(snap(t, (KEY, engine())) for t in (0, 5, 10, 15, 20)))
    for seconds in (4, 5, 11, 100):
        chosen = window_points(points, seconds, 1.0)
        delta = window_delta(points, seconds, 1.0)
        assert chosen[-1].taken_at - chosen[0].taken_at == delta.span_seconds
    assert window_points(points[:1], 60, 1) == ()


def _tpot_pool(fast_at_one: float, slow_at_twelve: float) -> list[Point]:
    """A pool whose TPOT observations land in bucket `fast_at_one` at batch 1 and `slow_at_twelve` at batch 12."""
    bounds = (0.01, 0.02, 0.04, 0.08, math.inf)

    def tpot(low: int, high: int) -> dict[LatencyMetric, object]:
        counts = [0.0] * len(bounds)
        for index, n in ((bounds.index(fast_at_one), low), (bounds.index(slow_at_twelve), high)):
            for i in range(index, len(bounds)):
                counts[i] += n
        return {TPOT: hist(tuple(counts), bounds)}

    return ring_of(
        snap(0, (KEY, busy(engine(generation_tokens=0, histograms=tpot(0, 0)), 1))),
        snap(5, (KEY, busy(engine(generation_tokens=50, histograms=tpot(10, 0)), 1))),
        snap(10, (KEY, busy(engine(generation_tokens=90, histograms=tpot(10, 0)), 12))),
        snap(15, (KEY, busy(engine(generation_tokens=900, histograms=tpot(10, 30)), 12))),
    )


def test_tpot_per_load_band_and_the_measured_speedup_per_band() -> None:
    # Speculation is faster at batch 1 (bucket 0.01 vs 0.02) and slower at batch 12 (bucket 0.08 vs 0.04).
    spec = {
        b: load_band_latency(h)
        for b, h in histograms_by_load_band(intervals(_tpot_pool(0.01, 0.08), [KEY]), TPOT).items()
    }
    base = {
        b: load_band_latency(h)
        for b, h in histograms_by_load_band(intervals(_tpot_pool(0.02, 0.04), [KEY]), TPOT).items()
    }
    # 5→10 ran at (1 + 12) / 2 = 6.5 but finished no request: no TPOT evidence for 5-8.
    assert set(spec) == {"1", "9-16"} and spec["1"].requests == 10 and spec["9-16"].requests == 30
    by_band = {c.band: c for c in compare_load_bands(spec, base)}
    # histogram_quantile interpolates inside the bucket: p50 0.005 (first bucket, from 0) vs 0.015 at batch 1,
    # 0.06 vs 0.03 at batch 12.
    assert (by_band["1"].spec_p50, by_band["1"].baseline_p50) == pytest.approx((0.005, 0.015))
    assert by_band["1"].speedup == pytest.approx(3.0) and by_band["1"].requests == 10
    assert by_band["9-16"].speedup == pytest.approx(0.5) and by_band["9-16"].requests == 30
    # A band only one pool was seen at compares nothing.
    assert compare_load_bands(spec, {"1": base["1"]}) == (by_band["1"],)


def test_window_loads_cover_each_window_per_engine_and_for_the_target() -> None:
    from spec_exporter.derive.load import window_loads
    from spec_exporter.types import Window

    other = ("m", "1")
    none, two = {TPOT: hist((0, 0, 0, 0))}, {TPOT: hist((0, 2, 2, 2))}
    points = ring_of(
        snap(0, (KEY, busy(engine(generation_tokens=0, histograms=none), 1)), (other, busy(engine(), 0))),
        snap(30, (KEY, busy(engine(generation_tokens=10, histograms=none), 1)), (other, busy(engine(), 0))),
        snap(60, (KEY, busy(engine(generation_tokens=90, histograms=two), 8)), (other, busy(engine(), 0))),
    )
    short, long = window_loads(points, (Window("30s", 30), Window("1m", 60)), 1.0, (KEY, other))
    # The last 30 s ran at (1 + 8) / 2 = 4.5 on one engine, while the other idled: 2.25 per engine.
    assert short.engines[KEY].mean_running == 4.5 and short.engines[KEY].band == "5-8"
    assert short.engines[other].band is None
    assert short.target.mean_running == 2.25 and short.target.band == "2-4"
    assert long.engines[KEY].mean_running == (30 * 1 + 30 * 4.5) / 60
    # Requests finishing in the last interval count at the target's band for it.
    assert set(long.latency_by_load_band[TPOT]) == {"2-4"} and long.latency_by_load_band[TPOT]["2-4"].requests == 2


def test_window_loads_agree_with_interval_by_interval_sums_across_band_changes_gaps_and_restarts() -> None:
    from spec_exporter.derive.load import window_loads
    from spec_exporter.types import Window

    other = ("m", "1")
    readings = [1, 1, 3, 3, 3, 12, 12, 1, 1, 0, 0, 6]
    snaps = []
    tpot = itl = tokens = 0.0
    for i, r in enumerate(readings):
        if i == 8:
            tpot = itl = tokens = 0.0  # vLLM restarted: every counter starts again
        tpot, itl, tokens = tpot + r, itl + 3 * r, tokens + 10 * r
        h = {TPOT: hist((tpot / 2, tpot, tpot, tpot)), ITL: hist((0, itl, itl, itl))}
        engines = [(KEY, busy(engine(generation_tokens=tokens, histograms=h), r))]
        if i not in (4, 5):  # the second engine misses two scrapes
            engines.append((other, busy(engine(generation_tokens=tokens, histograms=h), r / 2)))
        snaps.append(snap(5.0 * i, *engines))
    points = ring_of(*snaps)
    windows = (Window("20s", 20), Window("1m", 60))
    for wl in window_loads(points, windows, 1.0, (KEY, other)):
        spans = intervals(window_points(points, wl.window.seconds, 1.0), (KEY, other))
        assert wl.target == window_load(spans)
        for m in (TPOT, ITL):
            by_band = histograms_by_load_band(spans, m)
            assert {b: latency.histogram for b, latency in wl.latency_by_load_band[m].items()} == by_band
            # The quantiles come with the histograms: the collector renders them, it computes nothing.
            assert {b: latency.quantiles for b, latency in wl.latency_by_load_band[m].items()} == {
                b: {q: histogram_quantile(q, h.bounds, h.counts) for q in (0.5, 0.99)} for b, h in by_band.items()
            }
    assert window_loads(points, windows, 1.0, (KEY, other), load_band_latency=False)[1].latency_by_load_band == {}
