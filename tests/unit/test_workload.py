"""Workload classes (issue 21): each class source, the fold into `other`, the settings, and the class header's
value never reaching a log — through both tap front ends."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from spec_exporter.tap import voice
from spec_exporter.tap.asgi import SpecDecodeMiddleware
from spec_exporter.tap.metrics import TapMetrics
from spec_exporter.tap.proxy import create_tap_app
from spec_exporter.tap.settings import TapSettings, settings_from_env
from spec_exporter.tap.workload import DEFAULT, OTHER, FoldReason, WorkloadClasses, WorkloadSource, candidate
from tests.asgi_vllm import VLLMApp, call
from tests.conftest import FakeClock
from tests.openai_standin import OpenAIStandIn
from tests.unit.test_join import counts
from tests.unit.test_join_metrics import value
from tests.unit.test_tap import IDENTITY_ONLY, make_tap

C = "/v1/chat/completions"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "temperature": 0}


def body(**fields: Any) -> bytes:
    return json.dumps({**CHAT, **fields}).encode()


def classes(registry: CollectorRegistry) -> dict[str, float]:
    """Requests per workload label value (any model, band and outcome)."""
    out: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name == "spec_tap_requests":
            for s in metric.samples:
                if s.name == "spec_tap_requests_total" and s.value:
                    out[s.labels["workload"]] = out.get(s.labels["workload"], 0) + s.value
    return out


def folded(registry: CollectorRegistry, reason: FoldReason) -> float:
    return value(registry, "spec_tap_workload_folded_total", reason=reason.value)


# --- the pure parts -------------------------------------------------------------------------------------------


def test_sources_are_taken_in_order_header_model_route() -> None:
    every = WorkloadSource(header="x-workload", from_model=True, from_route=True)
    assert candidate(every, header="code", model="tiny", route="chat") == "code"
    assert candidate(every, header="  ", model="tiny", route="chat") == "tiny"
    assert candidate(every, header=None, model=None, route="chat") == "chat"
    assert candidate(every, header=None, model=None, route=None) is None
    # A source that is not configured is never read.
    assert candidate(WorkloadSource(), header="code", model="tiny", route="chat") is None
    assert candidate(WorkloadSource(from_route=True), header="code", model="tiny", route="chat") == "chat"


def test_a_configured_list_keeps_only_its_classes() -> None:
    kept = WorkloadClasses(("code", "chat"), 8)
    assert kept.label("code") == ("code", None)
    assert kept.label(None) == (DEFAULT, None)
    assert kept.label("tenant-42") == (OTHER, FoldReason.NOT_LISTED)
    assert kept.bound == 4


def test_without_a_list_the_first_values_are_kept_up_to_the_cap() -> None:
    kept = WorkloadClasses((), max_workloads=2)
    got = [kept.label(v) for v in ("a", "b", "c", "a")]
    assert got == [("a", None), ("b", None), (OTHER, FoldReason.OVER_CAP), ("a", None)]
    assert kept.label("x" * 65) == (OTHER, FoldReason.INVALID)
    assert kept.label("new\nline") == (OTHER, FoldReason.INVALID)
    # A client cannot pose as the reserved values.
    assert WorkloadClasses((), max_workloads=5).label("default") == (OTHER, FoldReason.INVALID)


def test_settings_from_the_environment_and_their_validation() -> None:
    env = {
        "SPEC_EXPORTER_TAP_WORKLOAD_HEADER": "X-Workload",
        "SPEC_EXPORTER_TAP_WORKLOADS": "code, chat",
        "SPEC_EXPORTER_TAP_WORKLOAD_FROM_ROUTE": "true",
    }
    s = settings_from_env(env)
    assert (s.workload_header, s.workloads, s.workload_from_route, s.workload_from_model) == (
        "x-workload",
        ["code", "chat"],
        True,
        False,
    )
    for bad in ({"workload_header": "x workload"}, {"workloads": ["other"]}, {"workloads": ["a", "a"]}):
        with pytest.raises(ValueError):
            TapSettings(**bad)
    # A bad variable is left at its default; vLLM keeps serving.
    assert settings_from_env({"SPEC_EXPORTER_TAP_WORKLOAD_HEADER": "bad header"}).workload_header is None


# --- through the middleware -------------------------------------------------------------------------------------


def middleware(registry: CollectorRegistry, **settings: Any) -> SpecDecodeMiddleware:
    s = TapSettings(**settings)
    metrics = TapMetrics(registry, workloads=s.workload_classes())
    return SpecDecodeMiddleware(VLLMApp(), metrics=metrics, settings=s, clock=FakeClock())


def headers(*extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), *extra]


async def test_middleware_header_source() -> None:
    registry = CollectorRegistry()
    mw = middleware(registry, workload_header="x-workload", workloads=["code", "chat"])
    await call(mw, C, body(), headers=headers((b"X-Workload", b"code")))
    await call(mw, C, body(temperature=0.9), headers=headers((b"x-workload", b"chat")))
    await call(mw, C, body(), headers=headers((b"x-workload", b"tenant-42")))
    await call(mw, C, body(), headers=headers())
    assert classes(registry) == {"code": 1, "chat": 1, OTHER: 1, DEFAULT: 1}
    assert counts(registry, workload="code") == {("tiny", "measured", "0"): 1}
    assert counts(registry, workload="chat") == {("tiny", "measured", "0.7-1.0"): 1}
    # Every per-band family carries the class.
    assert value(registry, "spec_tap_spec_steps_total", model_name="tiny", workload="code", temperature_band="0") > 0
    assert folded(registry, FoldReason.NOT_LISTED) == 1 and folded(registry, FoldReason.OVER_CAP) == 0


async def test_middleware_model_alias_source() -> None:
    registry = CollectorRegistry()
    mw = middleware(registry, workload_from_model=True, max_workloads=1)
    await call(mw, C, body(model="tiny"))
    await call(mw, C, body(model="tiny-code"))
    assert classes(registry) == {"tiny": 1, OTHER: 1}
    assert folded(registry, FoldReason.OVER_CAP) == 1


async def test_middleware_route_source_from_root_path_or_forwarded_prefix() -> None:
    registry = CollectorRegistry()
    mw = middleware(registry, workload_from_route=True)
    await call(mw, C, body(), root_path="/code")
    await call(mw, C, body(), headers=headers((b"x-forwarded-prefix", b"/chat/v2")))
    await call(mw, C, body())
    assert classes(registry) == {"code": 1, "chat": 1, DEFAULT: 1}


async def test_an_unconfigured_header_is_ignored() -> None:
    registry = CollectorRegistry()
    await call(middleware(registry), C, body(), headers=headers((b"x-workload", b"code")))
    assert classes(registry) == {DEFAULT: 1}


# --- through the proxy ------------------------------------------------------------------------------------------


async def test_proxy_header_and_route_sources(aiohttp_server: Any) -> None:
    upstream = OpenAIStandIn()
    server, registry = await make_tap(
        aiohttp_server, upstream, workload_header="x-workload", workload_from_route=True, workloads=["code", "chat"]
    )
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(skip_auto_headers=IDENTITY_ONLY) as client:
        for h in ({"x-workload": "code"}, {"X-Forwarded-Prefix": "/chat"}, {"x-workload": "nope"}, {}):
            async with client.post(url + C, data=body(), headers=h) as r:
                assert r.status == 200
    assert classes(registry) == {"code": 1, "chat": 1, OTHER: 1, DEFAULT: 1}
    assert folded(registry, FoldReason.NOT_LISTED) == 1


# --- the class header's value is never logged -------------------------------------------------------------------

SECRET = "tenant-SECRET-5e1b"


async def _no_spec_metrics(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """vLLM started without --per-request-spec-decode-metrics: a 200 without metrics (the middleware logs)."""
    while (await receive()).get("more_body", False):
        pass
    answer = json.dumps({"model": "tiny", "choices": [], "usage": {"completion_tokens": 3}}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


async def test_the_class_header_value_never_reaches_a_log(
    aiohttp_server: Any, unused_tcp_port: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(voice, "_said", set())
    secret = (b"x-workload", SECRET.encode())
    s = TapSettings(workload_header="x-workload", max_workloads=1)
    registry = CollectorRegistry()
    metrics = TapMetrics(registry, workloads=s.workload_classes())
    with capture_logs() as events:
        mw = SpecDecodeMiddleware(VLLMApp(), metrics=metrics, settings=s, clock=FakeClock())
        await call(mw, C, body(), headers=headers(secret))  # kept as a class
        await call(mw, C, b"not json", headers=headers(secret))
        await call(mw, C, body(), headers=headers((b"x-workload", SECRET.encode() + b"-2")))  # over the cap
        silent = SpecDecodeMiddleware(_no_spec_metrics, metrics=metrics, settings=s, clock=FakeClock())
        await call(silent, C, body(), headers=headers(secret))
        # The proxy, with nothing listening upstream: it logs that.
        nowhere = f"http://127.0.0.1:{unused_tcp_port}"
        tap = create_tap_app(nowhere, TapMetrics(CollectorRegistry()), s, clock=FakeClock())
        server = await aiohttp_server(tap)
        async with aiohttp.ClientSession(skip_auto_headers=IDENTITY_ONLY) as client:
            async with client.post(str(server.make_url(C)), data=body(), headers={"x-workload": SECRET}) as r:
                assert r.status == 502
    logged = caplog.text + "".join(r.getMessage() + repr(r.args) for r in caplog.records) + repr(events)
    assert any("per-request" in r.getMessage() for r in caplog.records)
    assert any(e["event"] == "tap upstream unreachable" for e in events)
    assert SECRET not in logged
    # The value was seen: kept as a class, then one past the cap folded.
    assert classes(registry)[SECRET] == 3 and classes(registry)[OTHER] == 1
