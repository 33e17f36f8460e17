"""The stand-in vLLM must speak vLLM's wire format: its bodies are checked against the real samples."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.standin import V032_IDLE, V032_LOAD, V033_MP, rewrite, sample, scale_counters, with_engines


def shape(text: str) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """(family, type, sample name, label names) for every sample: what a scraper relies on."""
    return {
        (f.name, f.type, s.name, tuple(sorted(s.labels)))
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


@pytest.mark.parametrize("fixture", [V032_IDLE, V032_LOAD, V033_MP])
@pytest.mark.parametrize(
    "transform",
    [
        lambda t: scale_counters(t, 2.5),
        lambda t: with_engines(t, 4),
        lambda t: rewrite(t, {'vllm:spec_decode_num_drafts_total{engine="0",model_name="' + _model(t) + '"}': 7}),
    ],
    ids=["scaled", "dp4", "rewritten"],
)
def test_standin_bodies_have_the_real_samples_shape(fixture: str, transform) -> None:  # type: ignore[no-untyped-def]
    real = sample(fixture)
    assert shape(transform(real)) == shape(real)


def _model(text: str) -> str:
    return "tiny" if 'model_name="tiny"' in text else "Qwen/Qwen3-8B"


def test_scaled_counters_really_grow_and_gauges_and_created_stay() -> None:
    real = {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(sample(V032_LOAD))
        for s in f.samples
    }
    scaled = {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(scale_counters(sample(V032_LOAD), 2.0))
        for s in f.samples
    }
    drafts = "vllm:spec_decode_num_draft_tokens_total[('engine', '0'), ('model_name', 'tiny')]"
    assert scaled[drafts] == 2 * real[drafts]
    for key, value in real.items():
        if "_created" in key or "kv_cache_usage" in key or "num_requests" in key:
            assert scaled[key] == value
