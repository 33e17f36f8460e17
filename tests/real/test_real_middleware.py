"""The real tier for the tap as a vLLM middleware: `--middleware spec_exporter.middleware.SpecDecodeMiddleware` in
a real vLLM (CPU build) with real draft-model speculative decoding, imported from this checkout through
PYTHONPATH (vLLM's virtualenv does not have the exporter installed; the middleware needs only prometheus_client
and pydantic, which vLLM has). What must hold exactly is pinned exactly: the middleware's per-band sums on vLLM's
own /metrics against vLLM's own speculative-decoding counters, request by request, in one API server process and
in two; greedy answers byte for byte against a vLLM without the middleware; the exporter's series against vLLM's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.multiprocess import MultiProcessCollector

from harness.ports import free_port
from harness.processes import exporter_cmd, running
from harness.prometheus import ScrapeJob, prometheus_stack
from harness.vllm import ROOT, VLLM, running_vllm
from harness.wait import until
from mixin.generate import render_rules
from tests.real.scrape import BAND_ALERT_BUDGET, BAND_PARAMS, POLL_BUDGET, Samples, http, samples, settle, total

MIDDLEWARE = ("--middleware", "spec_exporter.middleware.SpecDecodeMiddleware")
# vLLM imports the middleware from this checkout, not from an installed exporter.
ON_PATH = {"PYTHONPATH": str(ROOT)}
# These tests pin exact verdicts on greedy requests, which only a model drafting for itself makes certain.
SELF_DRAFT = "tiny"
# The bands of the default edges (0.3, 0.5, 0.7, 1.0), as the contract names them.
BAND_OF = {0.0: "0", 0.4: "0.3-0.5", 0.8: "0.7-1.0", 1.0: "1.0+"}
MESSAGES = [{"role": "user", "content": "hello speculative decoding"}]
PROMPT = "the quick brown fox"
# Every way a client asks: streamed or not, with usage, without, or explicitly without.
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"messages": MESSAGES}),
    "chat-stream-usage": (
        "/v1/chat/completions",
        {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
    ),
    "chat-stream": ("/v1/chat/completions", {"messages": MESSAGES, "stream": True}),
    "chat-stream-usage-false": (
        "/v1/chat/completions",
        {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": False}},
    ),
    "completion": ("/v1/completions", {"prompt": PROMPT}),
    "completion-stream": ("/v1/completions", {"prompt": PROMPT, "stream": True}),
}
ACCEPTED, DRAFTED = "spec_tap_accepted_tokens_total", "spec_tap_draft_tokens_total"
REQUESTS = "spec_tap_requests_total"
VLLM_ACCEPTED, VLLM_DRAFTED = "vllm:spec_decode_num_accepted_tokens_total", "vllm:spec_decode_num_draft_tokens_total"


def ask(url: str, kind: str, temperature: float, max_tokens: int = 16) -> bytes:
    path, body = KINDS[kind]
    return http(f"{url}{path}", {"model": "tiny", "max_tokens": max_tokens, "temperature": temperature, **body})


def delta(after: Samples, before: Samples, name: str, **match: str) -> float:
    return total(after, name, **match) - total(before, name, **match)


def bands(s: Samples) -> set[str]:
    return {dict(labels)["temperature_band"] for (n, labels) in s if n in (ACCEPTED, DRAFTED, REQUESTS)}


def consistent(url: str, before: Samples) -> Samples:
    """vLLM's /metrics once the middleware's sums have caught up with vLLM's counters (bounded): vLLM folds a
    step's counters and the middleware a finished response as each gets to it. Past the budget it returns what it
    read last, and the test's assertions say how the two differ."""
    last: list[Samples] = []

    def caught_up() -> bool:
        last[:] = [samples(url)]
        after = last[0]
        tap = (delta(after, before, ACCEPTED), delta(after, before, DRAFTED))
        return tap == (delta(after, before, VLLM_ACCEPTED), delta(after, before, VLLM_DRAFTED))

    with contextlib.suppress(AssertionError):
        until(caught_up, POLL_BUDGET, "the middleware's sums to catch up with vLLM's counters")
    return last[0]


def client_spec(kind: str, answer: bytes) -> dict[str, Any] | None:
    """metrics.speculative_decoding as the client received it (None for a stream without usage)."""
    if kind.endswith("stream-usage"):
        last = json.loads(events(answer)[-2].removeprefix("data: "))
        assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
        return dict(last["metrics"]["speculative_decoding"])
    if "stream" in kind:
        chunks = [json.loads(e.removeprefix("data: ")) for e in events(answer)[:-1]]
        assert chunks and all(c["choices"] and not c.get("usage") for c in chunks), "a usage chunk nobody asked for"
        return None
    return dict(json.loads(answer)["metrics"]["speculative_decoding"])


def events(stream: bytes) -> list[str]:
    text = stream.decode()
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    return [e for e in text.split("\n\n") if e]


def check_every_request(url: str, after_each: Callable[[], None] = lambda: None) -> Samples:
    """Send every kind at every temperature, one at a time; after each, the middleware's per-band sums moved
    exactly as vLLM's own counters did, all in that request's band, and the request counted once as measured."""
    start = samples(url)
    for temperature, band in BAND_OF.items():
        for kind in KINDS:
            before = samples(url)
            answer = ask(url, kind, temperature)
            after = consistent(url, before)
            engine = (delta(after, before, VLLM_ACCEPTED), delta(after, before, VLLM_DRAFTED))
            tap = (delta(after, before, ACCEPTED), delta(after, before, DRAFTED))
            in_band = (
                delta(after, before, ACCEPTED, temperature_band=band),
                delta(after, before, DRAFTED, temperature_band=band),
            )
            where = f"{kind} at T={temperature}"
            assert engine[1] > 0, where
            assert tap == engine, where
            assert in_band == engine, where
            assert delta(after, before, REQUESTS) == 1, where
            assert delta(after, before, REQUESTS, temperature_band=band, outcome="measured") == 1, where
            spec = client_spec(kind, answer)
            if spec is not None:
                # What the client was told is what was counted.
                assert (spec["num_accepted_draft_tokens"], spec["num_draft_tokens"]) == engine, where
            if temperature == 0:
                # The model drafts for itself: greedy drafts are always accepted.
                assert engine[0] == engine[1], where
            after_each()
    end = samples(url)
    assert delta(end, start, REQUESTS) == len(BAND_OF) * len(KINDS)
    assert {b for b in bands(end) if delta(end, start, REQUESTS, temperature_band=b) > 0} == set(BAND_OF.values())
    assert total(end, "spec_tap_errors_total") == 0
    return end


@pytest.fixture(scope="module")
def with_middleware(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLM]:
    log = tmp_path_factory.mktemp("middleware") / "vllm.log"
    # The random model drafting for itself: greedy drafts are always accepted, which the exact verdicts below use.
    with running_vllm(log, models=SELF_DRAFT, extra_args=MIDDLEWARE, env=ON_PATH) as vllm:
        yield vllm


def test_per_band_sums_on_vllms_metrics_equal_vllms_own_counters_request_by_request(with_middleware: VLLM) -> None:
    check_every_request(with_middleware.url)


def test_two_api_server_processes_both_record_and_the_sums_still_add_up(tmp_path: Path) -> None:
    # vLLM creates PROMETHEUS_MULTIPROC_DIR itself when it runs more than one API server; naming it here (a fresh
    # directory, as vLLM asks) lets the test see which processes wrote the middleware's series.
    multiproc = tmp_path / "prometheus-multiproc"
    multiproc.mkdir()
    env = {**ON_PATH, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    with running_vllm(tmp_path / "vllm.log", models=SELF_DRAFT, api_servers=2, extra_args=MIDDLEWARE, env=env) as v:
        start = samples(v.url)
        check_every_request(v.url)

        def recorders() -> set[str]:
            out = set()
            for db in multiproc.glob("counter_*.db"):
                for metric in MultiProcessCollector.merge([str(db)], accumulate=True):
                    if any(s.name == REQUESTS and s.value > 0 for s in metric.samples):
                        out.add(db.stem.removeprefix("counter_"))
            return out

        # The kernel spreads connections over the two processes; until both have answered one, ask again.
        extra = 0
        while len(recorders()) < 2:
            assert extra < 40, f"one API server process answered all {extra + 24} requests"
            ask(v.url, "chat", 0.4)
            extra += 1
        end = consistent(v.url, start)
        assert len(recorders()) == 2
    assert (delta(end, start, ACCEPTED), delta(end, start, DRAFTED)) == (
        delta(end, start, VLLM_ACCEPTED),
        delta(end, start, VLLM_DRAFTED),
    )
    assert delta(end, start, REQUESTS, outcome="measured") == len(BAND_OF) * len(KINDS) + extra


# What differs between two runs of the same greedy request: its id, its creation second and its timings.
PER_RUN = re.compile(
    rb'"(id|created|time_to_first_token_ms|generation_time_ms|queue_time_ms|mean_itl_ms|tokens_per_second)":'
    rb'("[^"]*"|[0-9.eE+-]+)'
)


def same_run(answer: bytes) -> bytes:
    return PER_RUN.sub(rb'"\1":_', answer)


def same_stream(answer: bytes) -> tuple[str, list[frozenset[str]], list[Any]]:
    """A stream as the client reads it, whatever its chunk boundaries: the text, which fields the chunks have (in
    order, each once), and the finish reasons and usage. vLLM merges the deltas a slow reader has not taken yet
    (vllm.v1.engine.output_processor.RequestOutputCollector), so on a busy machine the same greedy answer comes in
    other chunks, with or without the middleware; multi-byte characters split at other places then."""
    chunks = [json.loads(PER_RUN.sub(rb'"\1":"_"', e.encode()).removeprefix(b"data: ")) for e in events(answer)[:-1]]
    pieces = [
        c["choices"][0].get("delta", {}).get("content") or c["choices"][0].get("text") or ""
        for c in chunks
        if c["choices"]
    ]
    # A multi-byte character split at another chunk boundary comes out whole or as U+FFFD: compare the ASCII.
    text = "".join(pieces).encode("ascii", "ignore").decode()
    shapes: list[frozenset[str]] = []
    for c in chunks:
        shape = frozenset([*c, *(f"choices.{k}" for choice in c["choices"] for k in choice)])
        if not shapes or shapes[-1] != shape:
            shapes.append(shape)
    ends = [[choice.get("finish_reason") for choice in c["choices"]] for c in chunks] + [c.get("usage") for c in chunks]
    return text, shapes, [e for e in ends if e and e != [None]]


def test_greedy_answers_are_byte_identical_with_and_without_the_middleware(
    with_middleware: VLLM, tmp_path: Path
) -> None:
    tapped = {kind: ask(with_middleware.url, kind, 0.0, max_tokens=24) for kind in KINDS}
    with running_vllm(tmp_path / "plain.log", models=SELF_DRAFT) as plain:
        direct = {kind: ask(plain.url, kind, 0.0, max_tokens=24) for kind in KINDS}
    for kind in KINDS:
        if "stream" in kind:
            # The text, the framing, which fields the chunks have, the finish and the usage; not where chunks end.
            assert same_stream(tapped[kind]) == same_stream(direct[kind]), kind
        else:
            # Every byte but the per-run fields.
            assert same_run(tapped[kind]) == same_run(direct[kind]), kind
    for kind in ("chat-stream", "chat-stream-usage-false", "completion-stream"):
        # The middleware asked vLLM for the usage chunk of these streams; the client must not see it.
        assert b'"usage":{' not in tapped[kind], kind
    assert b'"usage":{' in tapped["chat-stream-usage"]


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def test_the_exporter_exports_the_bands_from_vllms_metrics_and_the_band_alert_fires(
    with_middleware: VLLM, tmp_path: Path
) -> None:
    exporter = f"127.0.0.1:{free_port()}"
    config = {
        "targets": [{"name": "vllm", "url": with_middleware.url}],
        "poll": {"interval": "1s", "timeout": "900ms"},
        "windows": ["5s", "10m"],
        # The exporter's band verdicts, made deterministic: the model drafts for itself, so a greedy request
        # accepts every draft (1.0 exactly: beneficial at beneficial_at 1.0) and a hot one (T=0.8, 24 tokens)
        # rejects at least one of its dozens of drafts (below 0.99: disable), whatever its acceptance is.
        "thresholds": {"min_draft_tokens": 10, "disable_below": 0.99, "beneficial_at": 1.0},
    }
    (tmp_path / "exporter.yaml").write_text(yaml.safe_dump(config))
    params = BAND_PARAMS
    jobs = [ScrapeJob("spec-exporter", [exporter], {"namespace": "demo"})]
    hot: list[float] = []
    with (
        running(
            exporter_cmd(tmp_path / "exporter.yaml", exporter), f"http://{exporter}/readyz", tmp_path / "exporter.log"
        ),
        prometheus_stack(tmp_path / "prometheus", rules=render_rules(params), jobs=jobs) as prom,
    ):
        settle(f"http://{exporter}")
        vllm_before, before = samples(with_middleware.url), samples(f"http://{exporter}")
        # As the proxy tap's real test does: mostly greedy traffic (every draft accepted) with a hot slice
        # accepting next to nothing. A hot request drafts about four times the tokens of a greedy one (one token
        # per step), so one in ten keeps the model's token-weighted average near 0.7: a healthy average (the alert
        # needs it at or above 0.5), a bad band (below 0.5) at Prometheus' default thresholds.
        requests = itertools.count()

        def fired() -> list[dict[str, Any]]:
            temperature = 0.8 if next(requests) % 10 == 9 else 0.0
            spec = json.loads(ask(with_middleware.url, "chat", temperature, max_tokens=24))["metrics"]
            if temperature:
                hot.append(
                    spec["speculative_decoding"]["num_accepted_draft_tokens"]
                    / spec["speculative_decoding"]["num_draft_tokens"]
                )
            return prom.firing("SpecDecodeTemperatureBandNetNegative")

        fired_alerts = until(
            fired, BAND_ALERT_BUDGET, "SpecDecodeTemperatureBandNetNegative", lambda: prom.acceptance_seen(params), 0
        )
        assert {a["labels"]["temperature_band"] for a in fired_alerts} == {"0.7-1.0"}
        settle(f"http://{exporter}")
        vllm_after, after = samples(with_middleware.url), samples(f"http://{exporter}")

    # The exporter's per-band counters moved exactly as the middleware's on vLLM's /metrics did, band by band.
    for band in ("0", "0.7-1.0"):
        for ours, theirs in (
            ("spec_decode_request_accepted_tokens_total", ACCEPTED),
            ("spec_decode_request_draft_tokens_total", DRAFTED),
        ):
            assert delta(after, before, ours, temperature_band=band) == delta(
                vllm_after, vllm_before, theirs, temperature_band=band
            ), (ours, band)
        assert delta(after, before, "spec_decode_tap_requests_total", temperature_band=band, outcome="measured") == (
            delta(vllm_after, vllm_before, REQUESTS, temperature_band=band, outcome="measured")
        )
    assert delta(after, before, "spec_decode_tap_requests_total", temperature_band="0.7-1.0") == len(hot) > 0
    # Every draft token vLLM counted in the window was measured by the middleware.
    assert total(after, "spec_decode_tap_coverage_ratio", window="10m") == 1.0
    # P10/P50/P90 of the window's requests: within a bucket (0.025) of the sample percentiles (nearest rank).
    for q in (0.1, 0.5, 0.9):
        label = {"window": "10m", "quantile": str(q)}
        greedy = total(after, "spec_decode_request_acceptance_rate_quantile", temperature_band="0", **label)
        assert 0.975 <= greedy <= 1.0, q
        p = total(after, "spec_decode_request_acceptance_rate_quantile", temperature_band="0.7-1.0", **label)
        assert abs(p - nearest_rank(hot, q)) <= 0.025, (q, p, sorted(hot))
    verdicts = {
        dict(labels)["temperature_band"]: dict(labels)["verdict"]
        for (n, labels), v in after.items()
        if n == "spec_decode_verdict" and v == 1 and dict(labels)["temperature_band"] in ("0", "0.7-1.0")
    }
    assert verdicts == {"0": "beneficial", "0.7-1.0": "disable"}
