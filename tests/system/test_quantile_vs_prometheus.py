"""Our `histogram_quantile` must agree with a real Prometheus `histogram_quantile` on the same buckets.

Every histogram below is backfilled into a throwaway TSDB as `test_bucket{case=...,le=...}` at one timestamp,
a real Prometheus serves it, and for each q the PromQL answer per `case` is compared with ours to 1e-9.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.prometheus import prometheus_stack
from spec_exporter.collector import SpecDecodeCollector
from spec_exporter.derive import latency
from spec_exporter.derive.health import derive_target
from spec_exporter.state import ExporterState, TargetState
from spec_exporter.tap.metrics import ACCEPTANCE_BUCKETS
from spec_exporter.types import EngineGeneration, Histogram, Snapshot, TapSample, TemperatureBandSample
from spec_exporter.window import SnapshotRing, window_delta
from tests.conftest import make_settings
from tests.promql_helpers import (
    backfill,
    build_info,
    format_float,
    openmetrics_line,
    query_vector,
    require_binaries,
)

METRIC = "test_bucket"
# One fixed sample time; queries use the same instant so the sample is inside the 5m lookback window.
SAMPLE_TIME_S = 1_700_000_000
ABS_TOL = 1e-9
# The exporter's own quantiles, the edges of [0, 1], and out-of-range values (PromQL answers ±Inf for those).
QS: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.0, 0.25, 1.0, -0.5, 1.5)

INF = "+Inf"
VLLM_TTFT_LES = (
    *("0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75", "1.0"),
    *("2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "160.0", "640.0", "2560.0", INF),
)
VLLM_ITL_LES = (
    *("0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5", "0.75", "1.0"),
    *("2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", INF),
)


@dataclass(frozen=True)
class Case:
    """One histogram: `le` label values exactly as exposed (so "1" and "1.0" can differ) and cumulative counts."""

    name: str
    les: tuple[str, ...]
    counts: tuple[float, ...]

    def __post_init__(self) -> None:
        assert len(self.les) == len(self.counts), self.name

    @property
    def bounds(self) -> tuple[float, ...]:
        return tuple(float(le) for le in self.les)


def cumulative(increments: list[float]) -> tuple[float, ...]:
    return tuple(itertools.accumulate(increments))


def hand_picked_cases() -> list[Case]:
    return [
        # Realistic vLLM TTFT: bulk between 40ms and 1s, a thin tail to 40s, nothing in the first buckets.
        Case(
            "ttft_vllm",
            VLLM_TTFT_LES,
            cumulative([0, 0, 0, 2, 31, 118, 204, 251, 690, 412, 139, 61, 88, 23, 7, 3, 2, 1, 0, 0, 0, 0, 0]),
        ),
        # An overloaded server: queueing pushes the tail (and the P99) into the 160-640s bucket.
        Case(
            "ttft_vllm_overloaded",
            VLLM_TTFT_LES,
            cumulative([0, 0, 0, 0, 0, 1, 3, 5, 40, 61, 80, 95, 310, 250, 120, 90, 140, 70, 30, 12, 9, 0, 0]),
        ),
        # Copied from a real scrape (tests/fixtures/vllm, no-spec nvidia): six requests.
        Case("ttft_vllm_scrape", VLLM_TTFT_LES, (0, 0, 0, 0, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)),
        # Realistic ITL: most tokens in 10-75ms, with rare multi-second stalls.
        Case(
            "itl_vllm",
            VLLM_ITL_LES,
            cumulative([412, 3310, 5120, 1804, 702, 390, 121, 64, 20, 9, 6, 3, 1, 1, 0, 0, 0, 0, 0, 0]),
        ),
        Case("custom", ("0.3", "1.7", "4.2", "11.0", INF), (2, 9, 17, 19, 20)),
        # Lines not sorted by bound: both sides must sort (Prometheus sorts buckets by parsed `le`).
        Case("custom_unsorted", ("4.2", INF, "0.3", "11.0", "1.7"), (17, 20, 2, 19, 9)),
        # Ranks landing exactly on a bucket's cumulative count pick that bucket (sort.Search uses >=).
        Case("rank_on_boundary", ("1.0", "2.0", "4.0", INF), (5, 10, 15, 20)),
        # Empty buckets in the middle: the first bucket reaching the rank wins, not a later one on the plateau.
        Case("plateau", ("1.0", "2.0", "3.0", "4.0", INF), (5, 5, 5, 10, 10)),
        # Most observations above the highest finite bound: the answer is the second-highest bound (2.0).
        Case("rank_in_inf_bucket", ("1.0", "2.0", INF), (1, 2, 100)),
        Case("all_in_first_bucket", ("0.5", "1.0", "5.0", INF), (10, 10, 10, 10)),
        # A first bucket with a bound <= 0 has no lower edge to interpolate from: its bound is returned.
        Case("first_bound_negative", ("-1.0", "0.5", "2.0", INF), (4, 6, 9, 10)),
        Case("first_bound_zero", ("0.0", "1.0", INF), (3, 8, 10)),
        # -Inf as the first bound: -Inf for ranks in it, NaN (-Inf + Inf) for ranks in the next one.
        Case("first_bound_minus_inf", ("-Inf", "1.0", INF), (2, 6, 10)),
        # Counts going down (e.g. buckets scraped at slightly different moments): PromQL forces them monotonic.
        Case("non_monotonic", ("0.1", "0.2", "0.5", "1.0", INF), (5, 3, 9, 7, 12)),
        Case("non_monotonic_inf_lower", ("0.1", "0.2", INF), (4, 10, 6)),
        # Fractional counts, as produced by rate()/increase() over a window.
        Case(
            "fractional_rate",
            ("0.05", "0.1", "0.25", "0.5", "1.0", INF),
            (0.1, 0.35, 1.2833333333333334, 1.9, 2.0, 2.05),
        ),
        Case("large_counts", ("0.01", "0.1", "1.0", INF), (3e14, 7.000000000001e14, 9.99e14, 1e15)),
        # Two series whose `le` parse to the same bound are merged (counts summed) before the quantile.
        Case("duplicate_bound_spellings", ("1", "1.0", "2.0", INF), (2, 3, 8, 10)),
        # No observations: Prometheus answers NaN (and the API still returns the series, as the string "NaN").
        Case("zero_observations", ("0.1", "1.0", INF), (0, 0, 0)),
        # Without a +Inf bucket the histogram is unusable: NaN.
        Case("missing_inf_bucket", ("0.1", "1.0", "10.0"), (1, 5, 9)),
        # Only the +Inf bucket: fewer than two buckets, NaN.
        Case("only_inf_bucket", (INF,), (7,)),
    ]


def random_cases(count: int = 40, seed: int = 1234) -> list[Case]:
    """Random histograms so agreement isn't limited to the shapes someone thought of."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        n = rng.randint(1, 14)
        style = rng.choice(("log", "linear", "integer"))
        if style == "log":
            finite = {10 ** rng.uniform(-4, 3) for _ in range(n)}
        elif style == "linear":  # may include negative bounds
            finite = {rng.uniform(-5.0, 50.0) for _ in range(n)}
        else:
            finite = {float(x) for x in rng.sample(range(100), n)}
        fractional = rng.random() < 0.4
        increments = [
            (rng.uniform(0, 3) if fractional else rng.randint(0, 40)) if rng.random() < 0.8 else 0
            for _ in range(len(finite) + 1)
        ]
        counts = list(cumulative(increments))
        if rng.random() < 0.2:  # break monotonicity somewhere
            j = rng.randrange(len(counts))
            counts[j] = rng.uniform(0, counts[j]) if fractional else rng.randint(0, int(counts[j]))
        if rng.random() < 0.05:
            counts = [0] * len(counts)
        les = [format_float(b) for b in sorted(finite)] + [INF]
        pairs = list(zip(les, counts, strict=True))
        rng.shuffle(pairs)  # our function must not rely on the bounds arriving sorted
        cases.append(Case(f"random_{i:02d}", tuple(le for le, _ in pairs), tuple(c for _, c in pairs)))
    return cases


CASES = hand_picked_cases() + random_cases()


def comparison_params() -> Iterator[object]:
    # q = 0 on vLLM's usual empty first bucket once raised ZeroDivisionError where Prometheus answers NaN.
    for q, case in itertools.product(QS, CASES):
        yield pytest.param(q, case, id=f"q={q}-{case.name}")


# --- the exporter's own per-band P10/P50/P90 against PromQL over the acceptance buckets it re-exports ----------

WINDOW_S = 60
BAND_QS = (0.1, 0.5, 0.9)


def _acceptance(values: list[float]) -> Histogram:
    """A per-request acceptance histogram on the tap's own buckets, as the join core observes it."""
    bounds = (*ACCEPTANCE_BUCKETS, math.inf)
    counts = tuple(float(sum(1 for v in values if v <= b)) for b in bounds)
    return Histogram(bounds, counts, float(len(values)), math.fsum(values))


def _tap(values_by_band: dict[str, list[float]]) -> TapSample:
    bands = {
        ("tiny", "default", band): TemperatureBandSample(
            accepted_tokens=10.0 * math.fsum(vs), draft_tokens=10.0 * len(vs), acceptance=_acceptance(vs)
        )
        for band, vs in values_by_band.items()
    }
    return TapSample(bands=bands)


def exporter_scrapes() -> list[tuple[int, str]]:
    """The exporter's /metrics after each of three polls a minute apart (time, text), through window, derive,
    state and collector; the last poll's 1m window starts at the second."""
    rng = random.Random(19)
    seen: dict[str, list[float]] = {"0": [], "0.7-1.0": []}
    settings = make_settings("http://127.0.0.1:1", windows=[f"{WINDOW_S}s", "5m"], poll={"interval": "30s"})
    params = settings.derive_params(settings.targets[0])
    ring = SnapshotRing(keep_seconds=600)
    scrapes = []
    for i in range(3):
        # Greedy requests accept most drafts; sampled ones spread wide, some near zero.
        seen["0"] += [min(1.0, rng.betavariate(8, 2)) for _ in range(rng.randint(20, 60))]
        seen["0.7-1.0"] += [rng.random() ** 2 for _ in range(rng.randint(20, 60))]
        taken_at = float(i * WINDOW_S)
        point = ring.push(Snapshot(taken_at, EngineGeneration.V1, {}, tap=_tap(seen)))
        slack = settings.poll.interval / 2
        deltas = {w.label: window_delta(ring.points, w.seconds, slack) for w in params.windows}
        health = derive_target(point, deltas, params, ring.points, slack)
        target = TargetState("vllm", "spec", up=True, ever_succeeded=True, health=health)
        state = ExporterState(MappingProxyType({"vllm": target}))
        registry = CollectorRegistry()
        registry.register(SpecDecodeCollector(lambda state=state: state))
        scrapes.append((SAMPLE_TIME_S - (2 - i) * WINDOW_S, generate_latest(registry).decode()))
    return scrapes


EXPORTER_SCRAPES = exporter_scrapes()


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def case_lines() -> list[str]:
    return [
        openmetrics_line(METRIC, {"case": case.name, "le": le}, count, SAMPLE_TIME_S)
        for case in CASES
        for le, count in zip(case.les, case.counts, strict=True)
    ]


def exporter_lines() -> list[str]:
    """The acceptance buckets of every exporter scrape, each series' samples in time order (as backfill wants)."""
    bucket = "spec_decode_request_acceptance_rate_bucket"
    rows = [(labels, at, value) for at, text in EXPORTER_SCRAPES for labels, value in _samples(text, bucket)]
    rows.sort(key=lambda r: (sorted(r[0].items()), r[1]))
    return [openmetrics_line(bucket, labels, value, at) for labels, at, value in rows]


def sample_lines() -> list[str]:
    return case_lines() + exporter_lines()


@pytest.fixture(scope="session")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    promtool, _ = require_binaries("promtool", "prometheus")
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    backfill(promtool, sample_lines(), workdir)
    # No rules and no scrape jobs: the only data is the backfilled block, and nothing lands in the head to confuse
    # queries. Time retention counts back from the newest block, so the old backfilled block stays.
    with prometheus_stack(workdir, rules={}, jobs=[]) as prometheus:
        yield prometheus.prometheus


@pytest.fixture(scope="session")
def prometheus_answers(prometheus_url: str) -> dict[float, dict[str, float]]:
    """PromQL's answer per q and `case`, fetched once: one query per q covers every histogram."""
    answers: dict[float, dict[str, float]] = {}
    for q in QS:
        rows = query_vector(prometheus_url, f"histogram_quantile({format_float(q)}, {METRIC})", SAMPLE_TIME_S)
        by_case = {labels["case"]: value for labels, value in rows}
        assert len(by_case) == len(rows), f"duplicate `case` labels in the answer for q={q}: {rows}"
        answers[q] = by_case
    return answers


def agree(ours: float, theirs: float) -> bool:
    if math.isnan(theirs) or math.isnan(ours):
        return math.isnan(theirs) and math.isnan(ours)
    return math.isclose(ours, theirs, rel_tol=0, abs_tol=ABS_TOL)


def test_backfilled_block_is_loaded(prometheus_url: str) -> None:
    # Guards the harness itself: if the block were not loaded (or not at this time), every query would come back
    # empty and the comparisons would fail for the wrong reason.
    rows = query_vector(prometheus_url, f"count({METRIC})", SAMPLE_TIME_S)
    assert [value for _, value in rows] == [len(case_lines())]


def test_every_case_is_answered(prometheus_answers: dict[float, dict[str, float]]) -> None:
    # Prometheus 2.x keeps NaN results in instant-query vectors (as "NaN"), so every case must come back.
    expected = {case.name for case in CASES}
    for q, by_case in prometheus_answers.items():
        assert set(by_case) == expected, f"q={q}"


@pytest.mark.parametrize(("q", "case"), list(comparison_params()))
def test_histogram_quantile_matches_prometheus(
    q: float, case: Case, prometheus_url: str, prometheus_answers: dict[float, dict[str, float]]
) -> None:
    theirs = prometheus_answers[q][case.name]
    ours = latency.histogram_quantile(q, case.bounds, case.counts)
    assert agree(ours, theirs), (
        f"histogram_quantile({q}) on {case.name}: ours={ours!r}, Prometheus {build_info(prometheus_url)['version']}"
        f" says {theirs!r}; buckets={list(zip(case.les, case.counts, strict=True))}"
    )


def test_the_exporters_band_quantiles_are_prometheus_histogram_quantile_over_its_buckets(
    prometheus_url: str,
) -> None:
    """One number, two readers: the P10/P50/P90 the exporter exports per band equal what the recording rules get
    from the acceptance buckets it re-exports (the window's increase, summed as the rules sum)."""
    bucket = "spec_decode_request_acceptance_rate_bucket"
    increase = f"({bucket} - {bucket} offset {WINDOW_S}s)"
    last = EXPORTER_SCRAPES[-1][1]
    ours = {
        (labels["temperature_band"], float(labels["quantile"])): value
        for labels, value in _samples(last, "spec_decode_request_acceptance_rate_quantile")
        if labels["window"] == f"{WINDOW_S // 60}m"
    }
    assert {q for _, q in ours} == set(BAND_QS) and {b for b, _ in ours} == {"0", "0.7-1.0"}
    for q in BAND_QS:
        promql = f"histogram_quantile({q}, sum by (le, model_name, temperature_band) {increase})"
        theirs = {
            labels["temperature_band"]: value for labels, value in query_vector(prometheus_url, promql, SAMPLE_TIME_S)
        }
        for band, value in theirs.items():
            assert agree(ours[(band, q)], value), f"q={q} band={band}: exporter {ours[(band, q)]}, Prometheus {value}"
        assert set(theirs) == {"0", "0.7-1.0"}
