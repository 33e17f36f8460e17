"""The fast vLLM parser, on every real sample and on the edge cases of the text format."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spec_exporter.types import EngineGeneration, LatencyMetric
from spec_exporter.vllm import names
from spec_exporter.vllm.parse import ExpositionParser, ParseError, parse_exposition
from tests.standin import (
    ALL_SAMPLES,
    NVIDIA_NO_SPEC,
    V032_IDLE,
    V032_LOAD,
    V033_MP,
    V085_V0,
    V085_V0_MP,
    sample,
    with_engines,
)


def stock_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every vllm:* sample through prometheus_client's own parser: (sample name, sorted labels) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("vllm:"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def stock_sum(values: dict, name: str, model: str, engine: str, **extra: str) -> float | None:
    hits = [
        v
        for (n, labels), v in values.items()
        if n == name
        and dict(labels).get("model_name", "") == model
        and dict(labels).get("engine", "") == engine
        and all(dict(labels).get(k) == x for k, x in extra.items())
    ]
    return math.fsum(hits) if hits else None


@pytest.mark.parametrize("fixture", ALL_SAMPLES)
def test_every_sample_agrees_with_the_stock_parser(fixture: str) -> None:
    text = sample(fixture)
    snap = parse_exposition(text, 0.0)
    stock = stock_values(text)
    assert snap.engines, "no engine found"
    for (model, engine), e in snap.engines.items():
        if e.spec is not None:
            assert e.spec.drafts == stock_sum(stock, names.SPEC_DRAFTS, model, engine)
            assert e.spec.draft_tokens == stock_sum(stock, names.SPEC_DRAFT_TOKENS, model, engine)
            assert e.spec.accepted_tokens == stock_sum(stock, names.SPEC_ACCEPTED_TOKENS, model, engine)
            for i, v in enumerate(e.spec.per_position):
                assert v == stock_sum(stock, names.SPEC_ACCEPTED_PER_POS, model, engine, position=str(i))
        assert e.generation_tokens == stock_sum(stock, names.GENERATION_TOKENS, model, engine)
        assert e.preemptions == stock_sum(stock, names.PREEMPTIONS, model, engine)
        assert e.requests_running == stock_sum(stock, names.REQUESTS_RUNNING, model, engine)
        assert e.requests_waiting == stock_sum(stock, names.REQUESTS_WAITING, model, engine)
        families = {m: f for f, m in names.LATENCY_FAMILIES.items()}
        legacy = {m: f for f, m in names.LEGACY_LATENCY_FAMILIES.items()}
        for metric, h in e.histograms.items():
            family = families[metric]
            if stock_sum(stock, family + "_count", model, engine) is None:
                family = legacy[metric]
            by_le = defaultdict(float)
            for (n, labels), v in stock.items():
                d = dict(labels)
                if n == family + "_bucket" and d.get("model_name", "") == model and d.get("engine", "") == engine:
                    by_le[float(d["le"])] += v
            assert h.bounds == tuple(sorted(by_le))
            assert h.counts == tuple(by_le[b] for b in h.bounds)
            assert h.count == stock_sum(stock, family + "_count", model, engine)
            assert h.sum == stock_sum(stock, family + "_sum", model, engine)


def test_v032_after_load_reads_the_spec_counters_and_latency_families() -> None:
    snap = parse_exposition(sample(V032_LOAD), 12.5)
    assert snap.taken_at == 12.5
    assert snap.generation is EngineGeneration.V1
    e = snap.engines[("tiny", "0")]
    assert e.spec is not None
    assert (e.spec.drafts, e.spec.draft_tokens, e.spec.accepted_tokens) == (49.0, 147.0, 55.0)
    assert e.spec.per_position == (35.0, 10.0, 10.0)
    assert set(e.histograms) == set(LatencyMetric)
    ttft = e.histograms[LatencyMetric.TTFT]
    assert ttft.bounds[:3] == (0.001, 0.005, 0.01) and math.isinf(ttft.bounds[-1])
    assert len(ttft.bounds) == 23 and ttft.count == 4.0
    assert e.generation_tokens == 106.0
    assert e.kv_cache_usage == 0.0


def test_created_series_are_not_mistaken_for_counters() -> None:
    text = sample(V032_LOAD)
    created_only = "\n".join(
        line for line in text.split("\n") if "_created" in line or not line.startswith("vllm:spec_decode")
    )
    snap = parse_exposition(created_only, 0.0)
    # The epoch-valued *_created gauges (≈1.8e9) must not stand in for the removed counters.
    assert snap.engines[("tiny", "0")].spec is None


def test_multiprocess_layout_without_created_and_with_sum_first() -> None:
    snap = parse_exposition(sample(V033_MP), 0.0)
    e = snap.engines[("Qwen/Qwen3-8B", "0")]
    assert e.spec is not None and e.spec.per_position == (576.0, 399.0, 280.0)
    assert e.kv_cache_usage == 0.12
    assert e.histograms[LatencyMetric.ITL].count == 800.0


@pytest.mark.parametrize("fixture", [V085_V0, V085_V0_MP])
def test_v0_uses_the_lifetime_gauge_and_ignores_its_broken_counters(fixture: str) -> None:
    snap = parse_exposition(sample(fixture), 0.0)
    assert snap.generation is EngineGeneration.V0
    (key,) = snap.engines
    assert key == ("meta-llama/Llama-3.1-8B-Instruct", "")
    e = snap.engines[key]
    assert e.spec is None
    assert e.lifetime_acceptance == pytest.approx(0.49583333333333335)
    # V0 has the pre-rename families: per-step latency from time_per_output_token, cache from gpu_cache.
    assert LatencyMetric.ITL in e.histograms and LatencyMetric.TPOT not in e.histograms
    assert e.kv_cache_usage == 0.08


def test_old_v1_names_are_read_when_the_new_ones_are_absent() -> None:
    snap = parse_exposition(sample(NVIDIA_NO_SPEC), 0.0)
    (e,) = snap.engines.values()
    assert e.spec is None and e.lifetime_acceptance is None
    stock = stock_values(sample(NVIDIA_NO_SPEC))
    itl_count = stock_sum(stock, "vllm:time_per_output_token_seconds_count", "Qwen/Qwen3-4B-Instruct-2507-FP8", "0")
    assert e.histograms[LatencyMetric.ITL].count == itl_count
    # Both cache gauges are present in this capture; the current name wins.
    kv = stock_sum(stock, "vllm:kv_cache_usage_perc", "Qwen/Qwen3-4B-Instruct-2507-FP8", "0")
    assert e.kv_cache_usage == kv


def test_current_itl_family_wins_over_the_legacy_one() -> None:
    text = (
        "# TYPE vllm:time_per_output_token_seconds histogram\n"
        'vllm:time_per_output_token_seconds_bucket{le="0.1",model_name="m"} 9.0\n'
        'vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 9.0\n'
        'vllm:time_per_output_token_seconds_count{model_name="m"} 9.0\n'
        "# TYPE vllm:inter_token_latency_seconds histogram\n"
        'vllm:inter_token_latency_seconds_bucket{le="0.1",model_name="m"} 1.0\n'
        'vllm:inter_token_latency_seconds_bucket{le="+Inf",model_name="m"} 2.0\n'
        'vllm:inter_token_latency_seconds_count{model_name="m"} 2.0\n'
    )
    e = parse_exposition(text, 0.0).engines[("m", "")]
    assert e.histograms[LatencyMetric.ITL].counts == (1.0, 2.0)


def test_data_parallel_engines_are_kept_apart() -> None:
    snap = parse_exposition(with_engines(sample(V032_LOAD), 4), 0.0)
    assert sorted(snap.engines) == [("tiny", str(r)) for r in range(4)]
    for rank in range(4):
        spec = snap.engines[("tiny", str(rank))].spec
        assert spec is not None and spec.draft_tokens == 147.0 * (rank + 1)


def test_bucket_bounds_come_from_the_scrape() -> None:
    text = (
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.3",model_name="m"} 1.0\n'
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="1.7",model_name="m"} 4.0\n'
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 5.0\n'
        'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 5.0\n'
        'vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 4.2\n'
    )
    h = parse_exposition(text, 0.0).engines[("m", "0")].histograms[LatencyMetric.TTFT]
    assert h.bounds == (0.3, 1.7, math.inf)
    assert h.counts == (1.0, 4.0, 5.0) and h.sum == 4.2


def test_nan_and_infinite_values_are_read_as_floats() -> None:
    text = (
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} NaN\n'
        "# TYPE vllm:num_preemptions_total counter\n"
        'vllm:num_preemptions_total{engine="0",model_name="m"} +Inf\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} -Inf\n'
    )
    e = parse_exposition(text, 0.0).engines[("m", "0")]
    assert e.kv_cache_usage is not None and math.isnan(e.kv_cache_usage)
    assert e.preemptions == math.inf and e.requests_waiting == -math.inf


def test_escaped_label_values_timestamps_and_untyped_lines() -> None:
    text = (
        'vllm:num_requests_running{model_name="a\\"b,c\\\\d",engine="1",} 3 1700000000000\n'
        "vllm:num_requests_waiting 2\n"
    )
    snap = parse_exposition(text, 0.0)
    assert snap.engines[('a"b,c\\d', "1")].requests_running == 3.0
    assert snap.engines[("", "")].requests_waiting == 2.0


def test_series_memo_does_not_change_results_across_polls() -> None:
    parser = ExpositionParser()
    first = parser.parse(sample(V032_IDLE), 0.0)
    second = parser.parse(sample(V032_LOAD), 1.0)
    assert first.engines[("tiny", "0")].spec.draft_tokens == 0.0  # type: ignore[union-attr]
    assert second == parse_exposition(sample(V032_LOAD), 1.0)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "unknown_layout"),
        ("<html><body>502 Bad Gateway</body></html>\n", "unknown_layout"),
        (
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1\n",
            "unknown_layout",
        ),
        ('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} abc\n', "parse_error"),
        ('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"}\n', "parse_error"),
        ('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m} 1\n', "parse_error"),
        (
            "# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter\n"
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="m",position="x"} 1\n',
            "parse_error",
        ),
        (
            "# TYPE vllm:e2e_request_latency_seconds histogram\n"
            'vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="m"} 1\n',
            "parse_error",
        ),
        (
            "# TYPE vllm:e2e_request_latency_seconds histogram\n"
            'vllm:e2e_request_latency_seconds_bucket{le="soon",model_name="m"} 1\n',
            "parse_error",
        ),
    ],
)
def test_bad_bodies_raise_a_parse_error_with_a_reason(body: str, reason: str) -> None:
    with pytest.raises(ParseError) as excinfo:
        parse_exposition(body, 0.0)
    assert excinfo.value.reason == reason


def test_a_body_cut_inside_a_histogram_is_rejected_not_half_read() -> None:
    text = sample(V032_LOAD)
    cut = text[: text.index('vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf"')]
    with pytest.raises(ParseError, match="no \\+Inf bucket"):
        parse_exposition(cut, 0.0)
