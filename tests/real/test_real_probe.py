"""The real tier for load: `probe` sweeping a real speculative vLLM against a real plain one, the schedule it
suggests started in the same vLLM, and the speculated-share formula checked against vLLM's own counters.

Whatever model the tier serves, the numbers are not pinned; what must hold is: every cell complete on both pools,
a schedule vLLM itself accepts and serves with, and Δdrafts / ΔITL observations = the share of decode steps that
drafted (1 for a lone request with speculation on at batch 1, 0 when the schedule turns it off there).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from harness.ports import free_port
from harness.processes import exporter_cmd, running
from harness.vllm import MODEL_NAME, running_vllm
from spec_exporter.derive.load import effective_k, load_band, speculated_share
from spec_exporter.types import LatencyMetric, SpecCounters
from spec_exporter.vllm.parse import parse_exposition
from tests.real.scrape import http, probe, settle


def chat(url: str, max_tokens: int = 24) -> dict[str, Any]:
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "hello speculative decoding"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    return json.loads(http(f"{url}/v1/chat/completions", body))


def counters(url: str) -> tuple[SpecCounters, float]:
    """vLLM's spec-decode counters and ITL observation count, summed over its engines."""
    snap = parse_exposition(http(f"{url}/metrics").decode(), 0.0)
    specs = [e.spec for e in snap.engines.values() if e.spec is not None]
    itl = sum(e.histograms[LatencyMetric.ITL].count for e in snap.engines.values() if LatencyMetric.ITL in e.histograms)
    spec = SpecCounters(
        drafts=sum(s.drafts for s in specs),
        draft_tokens=sum(s.draft_tokens for s in specs),
        accepted_tokens=sum(s.accepted_tokens for s in specs),
    )
    return spec, itl


def one_lone_request(url: str) -> tuple[SpecCounters, float]:
    """What one request alone (batch 1) adds to the counters: (spec-decode increase, ITL observations)."""
    (s0, i0) = counters(url)
    answer = chat(url)
    assert answer["choices"][0]["message"]["content"] and answer["usage"]["completion_tokens"] > 1
    (s1, i1) = counters(url)
    delta = SpecCounters(
        s1.drafts - s0.drafts, s1.draft_tokens - s0.draft_tokens, s1.accepted_tokens - s0.accepted_tokens
    )
    return delta, i1 - i0


def exporter_samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = http(f"{url}/metrics").decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(samples: list[tuple[str, dict[str, str], float]], name: str, labels: dict[str, str | None]) -> float | None:
    """The sample with exactly these labels (a None value: the label must be absent)."""
    wanted = {k: v for k, v in labels.items() if v is not None}
    found = [v for n, ls, v in samples if n == name and ls == wanted]
    return found[0] if found else None


CELL_NUMBERS = ("acceptance_rate", "mean_acceptance_length", "output_tokens_per_second", "tpot_speedup")


def test_probe_sweeps_against_a_baseline_and_vllm_serves_with_the_schedule_it_suggests(tmp_path: Path) -> None:
    with (
        running_vllm(tmp_path / "spec.log") as spec,
        running_vllm(tmp_path / "plain.log", speculative=False) as plain,
    ):
        # Every decode step of a lone request drafts k tokens: the share is 1 and the effective k is k.
        delta, itl = one_lone_request(spec.url)
        assert delta.drafts > 0
        assert speculated_share(delta.drafts, itl) == 1.0
        assert effective_k(delta) == 3
        doc, printed = probe(
            *("--target", spec.url, "--baseline-target", plain.url, "--concurrency", "1,2"),
            *("--temperatures", "0,1.0", "--requests", "4", "--max-tokens", "16"),
            *("--report", str(tmp_path / "probe.html")),
        )
        (tmp_path / "probe.json").write_text(printed)
    assert [(c["concurrency"], c["temperature"]) for c in doc["cells"]] == [(1, 0.0), (1, 1.0), (2, 0.0), (2, 1.0)]
    for c in doc["cells"]:
        where = (c["concurrency"], c["temperature"])
        assert c["failed"] == 0 and c["baseline"]["failed"] == 0, where
        assert c["acceptance_source"] == "per-request metrics", where
        assert all(c[k] is not None for k in CELL_NUMBERS), where
        assert all(c["acceptance_percentiles"].get(p) is not None for p in ("p10", "p50", "p90")), where
        for side in (c, c["baseline"]):
            assert all(side[m][q] is not None for m in ("ttft_seconds", "tpot_seconds") for q in ("p50", "p99")), where
            assert side["output_tokens_per_second"] > 0, where
        assert c["throughput_ratio"] > 0 and c["tpot_speedup"] > 0, where
        # Both pools run with --enable-per-request-metrics: both sides are vLLM's own TPOT, not the probe's clock.
        assert c["tpot_source"] == "vLLM per-request metrics", where
    assert [x["temperature"] for x in doc["crossover"]] == [0.0, 1.0]
    assert all(x["measured_concurrencies"] == [1, 2] for x in doc["crossover"])
    assert "<svg" in (tmp_path / "probe.html").read_text()

    config = doc["suggested_speculative_config"]
    schedule = config["num_speculative_tokens_per_batch_size"]
    assert schedule[0][0] == 1 and all(len(r) == 3 and all(isinstance(v, int) for v in r) for r in schedule)
    pasted = json.loads(json.dumps(config))
    with running_vllm(tmp_path / "scheduled.log", speculative_extra=pasted) as scheduled:
        exporter = f"127.0.0.1:{free_port()}"
        settings = {
            "targets": [{"name": "vllm", "url": scheduled.url}],
            "poll": {"interval": "1s", "timeout": "900ms"},
            "windows": ["30s", "10m"],
        }
        (tmp_path / "exporter.yaml").write_text(yaml.safe_dump(settings))
        cmd = exporter_cmd(tmp_path / "exporter.yaml", exporter)
        with running(cmd, f"http://{exporter}/readyz", tmp_path / "exporter.log"):
            settle(f"http://{exporter}")
            delta, itl = one_lone_request(scheduled.url)
            settle(f"http://{exporter}")
            lone = exporter_samples(f"http://{exporter}")
            # A few at once: the exporter reads vLLM's running-requests gauge into the load band.
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda _: chat(scheduled.url, 48), range(3)))
            settle(f"http://{exporter}")
            busy = exporter_samples(f"http://{exporter}")
    # At batch 1 the schedule's first k decides: every decode step drafts, or none does.
    k_alone = schedule[0][2]
    assert speculated_share(delta.drafts, itl) == (1.0 if k_alone > 0 else 0.0)
    if k_alone > 0:
        assert effective_k(delta) == k_alone
    # The exporter's window (from its first poll, before the request) says exactly what vLLM's counters say.
    window = {"target": "vllm", "model_name": MODEL_NAME, "engine": "0", "window": "10m"}
    assert value(lone, "spec_decode_speculated_step_ratio", window) == speculated_share(delta.drafts, itl)
    assert value(lone, "spec_decode_load_band_info", {**window, "load_band": "1"} | {"window": None}) == 1.0
    running_now = value(busy, "spec_decode_load_running_requests", {**window, "window": "30s"})
    assert running_now is not None and 1.0 <= running_now <= 3.0
    band = load_band(running_now)
    assert value(busy, "spec_decode_load_band_info", {**window, "load_band": band} | {"window": None}) == 1.0
