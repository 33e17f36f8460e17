"""The engine's speculative method on an info series (issue 21): read once from vLLM's in-process config by the
middleware, from configuration for the proxy; absent config → no series and never an exception."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from spec_exporter.config import SpeculationConfig
from spec_exporter.tap.asgi import SpecDecodeMiddleware
from spec_exporter.tap.metrics import TapMetrics
from spec_exporter.tap.settings import TapSettings
from spec_exporter.tap.speculative import LABELS, info_labels
from spec_exporter.vllm.parse import parse_exposition
from tests.asgi_vllm import VLLMApp, call
from tests.conftest import FakeClock
from tests.unit.test_exposition import V032_LOAD, polled, sample, scale_counters
from tests.unit.test_join import counts

C = "/v1/chat/completions"
BODY = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}).encode()
INFO = "spec_tap_speculative_config_info"


def vllm_app(speculative_config: Any) -> Any:
    """What vLLM's FastAPI app carries (0.32: app.state.vllm_config, set at startup)."""
    return SimpleNamespace(state=SimpleNamespace(vllm_config=SimpleNamespace(speculative_config=speculative_config)))


EAGLE = SimpleNamespace(
    method="eagle3",
    num_speculative_tokens=3,
    model="yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",
    draft_model_config=SimpleNamespace(model="yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"),
    draft_sample_method="greedy",
    rejection_sample_method="standard",
)


class WithApp:
    """Starlette puts the app into every request's scope before the middleware stack."""

    def __init__(self, inner: Any, app: Any) -> None:
        self.inner, self.app = inner, app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.inner({**scope, "app": self.app}, receive, send)


def info(registry: CollectorRegistry) -> list[dict[str, str]]:
    return [s.labels for m in registry.collect() if m.name == INFO for s in m.samples if s.value == 1]


async def test_the_middleware_reads_vllms_speculative_config_once() -> None:
    registry = CollectorRegistry()
    mw = SpecDecodeMiddleware(VLLMApp(), metrics=TapMetrics(registry), settings=TapSettings(), clock=FakeClock())
    app = vllm_app(EAGLE)
    got = await call(WithApp(mw, app), C, BODY)
    assert got.status == 200
    expected = {
        "method": "eagle3",
        "num_speculative_tokens": "3",
        "draft_model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",
        "draft_sample_method": "greedy",
        "rejection_sample_method": "standard",
    }
    assert info(registry) == [expected]
    # Fixed for the server's life: read once, whatever a later request's scope holds.
    app.state.vllm_config.speculative_config = SimpleNamespace(method="ngram", num_speculative_tokens=5)
    await call(WithApp(mw, app), C, BODY)
    assert info(registry) == [expected]
    # And the exporter reads it off vLLM's /metrics as the same labels.
    snapshot = parse_exposition(sample(V032_LOAD) + generate_latest(registry).decode(), 0.0)
    assert snapshot.tap is not None and dict(snapshot.tap.speculative or ()) == expected


class Hostile:
    @property
    def state(self) -> Any:
        raise RuntimeError("not vLLM's app")


async def test_no_config_no_series_and_never_an_exception_in_the_request_path() -> None:
    for app in (None, SimpleNamespace(), SimpleNamespace(state=SimpleNamespace()), vllm_app(None), Hostile()):
        registry = CollectorRegistry()
        mw = SpecDecodeMiddleware(VLLMApp(), metrics=TapMetrics(registry), settings=TapSettings(), clock=FakeClock())
        got = await call(WithApp(mw, app), C, BODY)
        assert got.status == 200 and info(registry) == []
        assert counts(registry) == {("tiny", "measured", "0"): 1}


async def test_a_failing_read_is_counted_not_raised(monkeypatch: Any) -> None:
    def boom(scope: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr("spec_exporter.tap.asgi.from_asgi_scope", boom)
    registry = CollectorRegistry()
    mw = SpecDecodeMiddleware(VLLMApp(), metrics=TapMetrics(registry), settings=TapSettings(), clock=FakeClock())
    assert (await call(WithApp(mw, vllm_app(EAGLE)), C, BODY)).status == 200
    assert registry.get_sample_value("spec_tap_errors_total", {"stage": "internal"}) == 1
    assert info(registry) == []


def test_labels_are_closed_and_come_from_configuration_for_the_proxy() -> None:
    labels = info_labels(SpeculationConfig(method="ngram", num_speculative_tokens=4).model_dump())
    assert labels == {
        "method": "ngram",
        "num_speculative_tokens": "4",
        "draft_model": "",
        "draft_sample_method": "",
        "rejection_sample_method": "",
    }
    assert info_labels(SpeculationConfig().model_dump()) is None
    assert tuple(labels) == LABELS
    odd = info_labels({"method": "x" * 300, "draft_model": object()})
    assert odd is not None and odd["method"] == "invalid" and odd["draft_model"] == "invalid"


async def test_the_exporter_exports_the_taps_speculative_config(standin: Any, make_poller: Any, clock: Any) -> None:
    tap_registry = CollectorRegistry()
    metrics = TapMetrics(tap_registry)
    metrics.speculative_config(info_labels({"method": "draft_model", "num_speculative_tokens": 3, "draft_model": "d"}))
    body = scale_counters(sample(V032_LOAD), 1.0) + generate_latest(tap_registry).decode()
    _, registry = await polled(standin, make_poller, clock, body, body)
    labels = {
        "target": "vllm",
        "method": "draft_model",
        "num_speculative_tokens": "3",
        "draft_model": "d",
        "draft_sample_method": "",
        "rejection_sample_method": "",
    }
    assert registry.get_sample_value("spec_decode_speculative_config_info", labels) == 1


async def test_read_once_per_middleware_and_one_label_set_per_registry(monkeypatch: Any) -> None:
    import spec_exporter.tap.asgi as asgi_module

    reads: list[Any] = []
    real = asgi_module.from_asgi_scope

    def counting(scope: Any) -> Any:
        reads.append(scope)
        return real(scope)

    monkeypatch.setattr(asgi_module, "from_asgi_scope", counting)
    registry = CollectorRegistry()
    metrics = TapMetrics(registry)
    mw = SpecDecodeMiddleware(VLLMApp(), metrics=metrics, settings=TapSettings(), clock=FakeClock())
    for _ in range(3):
        await call(WithApp(mw, vllm_app(EAGLE)), C, BODY)
    assert len(reads) == 1
    # vLLM may build its middleware stack twice on one registry: the first configuration stays the only one.
    metrics.speculative_config(info_labels({"method": "ngram", "num_speculative_tokens": 5}))
    assert [labels["method"] for labels in info(registry)] == ["eagle3"]
