"""The spec_tap_* families: shape, folding, the model-name cap and sanitising, multiprocess sums."""

from __future__ import annotations

import itertools
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from spec_exporter.tap.metrics import (
    ACCEPTANCE_BUCKETS,
    INVALID_MODEL,
    OTHER_MODEL,
    UNKNOWN_MODEL,
    ErrorStage,
    Outcome,
    TapMetrics,
)
from tests.tap_folds import measured, outcome


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    # Round-trip through the text format: what a scraper sees, and proof the exposition still renders.
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    if "temperature_band" in labels:
        labels.setdefault("workload", "default")
    return samples(registry).get((name, tuple(sorted(labels.items()))), 0.0)


def test_acceptance_buckets_have_verdict_edges_and_fine_steps():
    assert len(ACCEPTANCE_BUCKETS) == 41
    assert ACCEPTANCE_BUCKETS[0] == 0.0 and ACCEPTANCE_BUCKETS[-1] == 1.0
    assert 0.5 in ACCEPTANCE_BUCKETS and 0.65 in ACCEPTANCE_BUCKETS
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ACCEPTANCE_BUCKETS)}
    assert steps == {0.025}


def _histogram_quantile(q: float, bounds: tuple[float, ...], cumulative: list[int]) -> float:
    # Prometheus's histogram_quantile: linear interpolation inside the bucket holding rank q·count.
    total = cumulative[-1]
    rank = q * total
    for i, c in enumerate(cumulative):
        if c >= rank:
            lo = bounds[i - 1] if i > 0 else 0.0
            below = cumulative[i - 1] if i > 0 else 0
            if i == 0:
                return bounds[0]
            return lo + (bounds[i] - lo) * (rank - below) / (c - below)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(20))
def test_interpolated_percentiles_are_within_a_bucket_of_the_exact_ones(seed):
    rng = random.Random(seed)
    registry = CollectorRegistry()
    metrics = TapMetrics(registry)
    rates = []
    for _ in range(rng.randrange(50, 400)):
        drafted = rng.randrange(1, 200)
        accepted = min(drafted, max(0, round(drafted * rng.betavariate(rng.uniform(1, 8), rng.uniform(1, 8)))))
        rates.append(accepted / drafted)
        measured(metrics, "m", "0.3-0.5", accepted, drafted, None, None)
    cumulative = [
        int(
            value(
                registry,
                "spec_tap_request_acceptance_rate_bucket",
                model_name="m",
                temperature_band="0.3-0.5",
                le=str(b),
            )
        )
        for b in ACCEPTANCE_BUCKETS
    ]
    rates.sort()
    for q in (0.1, 0.5, 0.9):
        exact = rates[max(0, math.ceil(q * len(rates)) - 1)]
        assert abs(_histogram_quantile(q, ACCEPTANCE_BUCKETS, cumulative) - exact) <= 0.025 + 1e-9


def test_measured_request_folds_tokens_rate_and_latency():
    registry = CollectorRegistry()
    metrics = TapMetrics(registry)
    measured(metrics, "qwen", "0.3-0.5", 3, 4, 0.12, 0.03)
    measured(metrics, "qwen", "0.3-0.5", 1, 4, None, None)
    labels = {"model_name": "qwen", "temperature_band": "0.3-0.5"}
    assert value(registry, "spec_tap_requests_total", outcome="measured", **labels) == 2
    assert value(registry, "spec_tap_accepted_tokens_total", **labels) == 4
    assert value(registry, "spec_tap_draft_tokens_total", **labels) == 8
    assert value(registry, "spec_tap_request_acceptance_rate_count", **labels) == 2
    assert value(registry, "spec_tap_request_acceptance_rate_sum", **labels) == pytest.approx(1.0)
    assert value(registry, "spec_tap_request_acceptance_rate_bucket", le="0.25", **labels) == 1
    assert value(registry, "spec_tap_request_acceptance_rate_bucket", le="0.725", **labels) == 1
    assert value(registry, "spec_tap_request_acceptance_rate_bucket", le="0.75", **labels) == 2
    assert value(registry, "spec_tap_request_ttft_seconds_count", **labels) == 1
    assert value(registry, "spec_tap_request_tpot_seconds_sum", **labels) == pytest.approx(0.03)


def test_only_measured_requests_with_drafts_count_tokens_and_rate():
    registry = CollectorRegistry()
    metrics = TapMetrics(registry)
    measured(metrics, "m", "0", 0, 0, None, None)
    outcome(metrics, "m", "0", Outcome.NO_SPEC_METRICS, ttft=0.5)
    metrics.request("m", "0", Outcome.NOT_MEASURABLE, accepted=5, drafted=9)
    labels = {"model_name": "m", "temperature_band": "0"}
    assert value(registry, "spec_tap_request_acceptance_rate_count", **labels) == 0
    assert value(registry, "spec_tap_draft_tokens_total", **labels) == 0
    assert value(registry, "spec_tap_requests_total", outcome="no_spec_metrics", **labels) == 1
    assert value(registry, "spec_tap_requests_total", outcome="not_measurable", **labels) == 1
    assert value(registry, "spec_tap_request_ttft_seconds_count", **labels) == 1


def test_error_stages_exist_from_the_start_and_count():
    registry = CollectorRegistry()
    metrics = TapMetrics(registry)
    assert {value(registry, "spec_tap_errors_total", stage=s.value) for s in ErrorStage} == {0.0}
    metrics.error(ErrorStage.INTERNAL)
    assert value(registry, "spec_tap_errors_total", stage="internal") == 1


def test_model_names_past_the_cap_share_other():
    registry = CollectorRegistry()
    metrics = TapMetrics(registry, max_models=2)
    for model in ("a", "b", "c", "a", "d", "b"):
        outcome(metrics, model, "0", Outcome.NO_SPEC_METRICS)
    got = {dict(k[1])["model_name"]: v for k, v in samples(registry).items() if k[0] == "spec_tap_requests_total"}
    assert got == {"a": 2, "b": 2, OTHER_MODEL: 2}


def test_a_missing_model_is_unknown_and_does_not_take_a_slot():
    registry = CollectorRegistry()
    metrics = TapMetrics(registry, max_models=1)
    outcome(metrics, None, "unknown", Outcome.NOT_UNDERSTOOD)
    outcome(metrics, "a", "0", Outcome.NO_SPEC_METRICS)
    assert (
        value(
            registry,
            "spec_tap_requests_total",
            model_name=UNKNOWN_MODEL,
            temperature_band="unknown",
            outcome="not_understood",
        )
        == 1
    )
    assert (
        value(registry, "spec_tap_requests_total", model_name="a", temperature_band="0", outcome="no_spec_metrics") == 1
    )


@pytest.mark.parametrize(
    "bad",
    ["bad-\ud800", "\udfff", "x" * 201, "ok-prefix-\udc80-suffix"],
    ids=["lone-high-surrogate", "lone-low-surrogate", "201-chars", "surrogate-inside"],
)
def test_unencodable_or_overlong_model_names_become_invalid_and_never_break_a_scrape(bad):
    registry = CollectorRegistry()
    metrics = TapMetrics(registry, max_models=5)
    measured(metrics, bad, "0.5-0.7", 2, 3, 0.1, 0.01)
    outcome(metrics, bad, "0.5-0.7", Outcome.NOT_MEASURABLE)
    generate_latest(registry)  # raised UnicodeEncodeError before: every later scrape failed
    labels = {"model_name": INVALID_MODEL, "temperature_band": "0.5-0.7"}
    assert value(registry, "spec_tap_requests_total", outcome="measured", **labels) == 1
    assert value(registry, "spec_tap_accepted_tokens_total", **labels) == 2
    assert value(registry, "spec_tap_errors_total", stage="request") == 2
    # An invalid name takes no slot under the cap.
    for i in range(5):
        outcome(metrics, f"m{i}", "0", Outcome.NO_SPEC_METRICS)
    assert (
        value(registry, "spec_tap_requests_total", model_name="m4", temperature_band="0", outcome="no_spec_metrics")
        == 1
    )


@pytest.mark.parametrize("odd", ['quo"te', "back\\slash", "new\nline", "tab\tand space", "ünïcødé-模型", "x" * 200, ""])
def test_odd_but_encodable_model_names_are_kept_exactly(odd):
    registry = CollectorRegistry()
    outcome(TapMetrics(registry), odd, "0", Outcome.NO_SPEC_METRICS)
    assert (
        value(registry, "spec_tap_requests_total", model_name=odd, temperature_band="0", outcome="no_spec_metrics") == 1
    )


_CHILD = textwrap.dedent(
    """
    import sys
    from prometheus_client import CollectorRegistry
    from spec_exporter.tap.metrics import Outcome, TapMetrics

    metrics = TapMetrics(CollectorRegistry())
    accepted, drafted = int(sys.argv[1]), int(sys.argv[2])
    metrics.request("m", "0.3-0.5", Outcome.MEASURED, accepted=accepted, drafted=drafted, ttft=0.2, tpot=0.02)
    metrics.request("m", "0.3-0.5", Outcome.NO_SPEC_METRICS)
    """
)


def test_multiprocess_mode_sums_every_process(tmp_path: Path):
    # vLLM with --api-server-count > 1 sets PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client;
    # each API-server process records into its own files and /metrics is a MultiProcessCollector over them.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for accepted, drafted in ((3, 4), (5, 10)):
        subprocess.run([sys.executable, "-c", _CHILD, str(accepted), str(drafted)], env=env, check=True, timeout=60)
    assert list(tmp_path.glob("*.db"))
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    labels = {"model_name": "m", "temperature_band": "0.3-0.5"}
    assert value(registry, "spec_tap_accepted_tokens_total", **labels) == 8
    assert value(registry, "spec_tap_draft_tokens_total", **labels) == 14
    assert value(registry, "spec_tap_requests_total", outcome="measured", **labels) == 2
    assert value(registry, "spec_tap_requests_total", outcome="no_spec_metrics", **labels) == 2
    assert value(registry, "spec_tap_request_acceptance_rate_count", **labels) == 2
    assert value(registry, "spec_tap_request_acceptance_rate_bucket", le="0.5", **labels) == 1
    assert value(registry, "spec_tap_request_acceptance_rate_bucket", le="0.75", **labels) == 2
    assert value(registry, "spec_tap_request_ttft_seconds_count", **labels) == 2
