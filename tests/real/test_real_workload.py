"""The real tier for workload classes (issue 21): a real vLLM (CPU build, the random model drafting for itself)
with the middleware classifying requests by the `x-workload` header, two classes sent at once: greedy
code-completion prompts (`code`) and hot chat prompts (`chat`). Per class and band, the middleware's sums on vLLM's
/metrics add up to vLLM's own engine counters exactly; the exporter, polling that /metrics, models the hot class's
speedup below the greedy one's; and the engine's speculative method is on the info series.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from harness.ports import free_port
from harness.processes import exporter_cmd, running
from harness.vllm import VLLM, running_vllm
from tests.real.scrape import Samples, http, samples, settle, total
from tests.real.test_real_middleware import (
    ACCEPTED,
    DRAFTED,
    MIDDLEWARE,
    ON_PATH,
    REQUESTS,
    SELF_DRAFT,
    VLLM_ACCEPTED,
    VLLM_DRAFTED,
    consistent,
    delta,
)

CLASSES = {"SPEC_EXPORTER_TAP_WORKLOAD_HEADER": "x-workload", "SPEC_EXPORTER_TAP_WORKLOADS": "code,chat"}
CODE_PROMPTS = ["def fibonacci(n):", "for i in range(10):", "class Stack:\n    def push(self, item):", "import os\n"]
CHAT_PROMPTS = [
    "Tell me a story about the sea.",
    "What makes a good friend?",
    "Describe a sunset.",
    "Why do cats purr?",
]
# Per class, what it sends: (temperature, band).
CODE, CHAT = (0.0, "0"), (0.8, "0.7-1.0")
ROUNDS = 6


def code_request(url: str, prompt: str) -> bytes:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": CODE[0]}
    return http(f"{url}/v1/completions", body, headers={"x-workload": "code"})


def chat_request(url: str, prompt: str) -> bytes:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 24,
        "temperature": CHAT[0],
    }
    return http(f"{url}/v1/chat/completions", body, headers={"x-workload": "chat"})


def both_at_once(url: str) -> None:
    """Every round sends the code and the chat prompts together, so both classes share verification passes."""
    with ThreadPoolExecutor(max_workers=len(CODE_PROMPTS) + len(CHAT_PROMPTS)) as pool:
        for _ in range(ROUNDS):
            futures = [pool.submit(code_request, url, p) for p in CODE_PROMPTS]
            futures += [pool.submit(chat_request, url, p) for p in CHAT_PROMPTS]
            for f in futures:
                assert json.loads(f.result())["metrics"]["speculative_decoding"]["num_draft_tokens"] > 0


@pytest.fixture(scope="module")
def classified(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLM]:
    log = tmp_path_factory.mktemp("workload") / "vllm.log"
    env = {**ON_PATH, **CLASSES}
    with running_vllm(log, models=SELF_DRAFT, extra_args=MIDDLEWARE, env=env) as vllm:
        yield vllm


def per_class(after: Samples, before: Samples, name: str, workload: str, band: str) -> float:
    return delta(after, before, name, workload=workload, temperature_band=band)


def test_two_classes_at_once_add_up_to_vllms_counters_and_the_hot_one_pays_less(
    classified: VLLM, tmp_path: Path
) -> None:
    url = classified.url
    exporter = f"127.0.0.1:{free_port()}"
    config = {
        "targets": [{"name": "vllm", "url": url}],
        "poll": {"interval": "1s", "timeout": "900ms"},
        "windows": ["10m"],
        "thresholds": {"min_draft_tokens": 10},
    }
    (tmp_path / "exporter.yaml").write_text(yaml.safe_dump(config))
    with running(
        exporter_cmd(tmp_path / "exporter.yaml", exporter), f"http://{exporter}/readyz", tmp_path / "exporter.log"
    ):
        settle(f"http://{exporter}")
        before = samples(url)
        both_at_once(url)
        after = consistent(url, before)
        settle(f"http://{exporter}")
        ours = samples(f"http://{exporter}")

    engine = (delta(after, before, VLLM_ACCEPTED), delta(after, before, VLLM_DRAFTED))
    assert engine[1] > 0
    code = (
        per_class(after, before, ACCEPTED, "code", CODE[1]),
        per_class(after, before, DRAFTED, "code", CODE[1]),
    )
    chat = (
        per_class(after, before, ACCEPTED, "chat", CHAT[1]),
        per_class(after, before, DRAFTED, "chat", CHAT[1]),
    )
    # Per class and band, exactly: the two slices are all of the engine's speculation, and nothing went elsewhere.
    assert (code[0] + chat[0], code[1] + chat[1]) == engine
    assert (delta(after, before, ACCEPTED), delta(after, before, DRAFTED)) == engine
    n = ROUNDS * len(CODE_PROMPTS)
    assert per_class(after, before, REQUESTS, "code", CODE[1]) == n
    assert per_class(after, before, REQUESTS, "chat", CHAT[1]) == ROUNDS * len(CHAT_PROMPTS)
    assert delta(after, before, REQUESTS, workload="other") == delta(after, before, REQUESTS, workload="default") == 0
    # The model drafts for itself: every greedy draft is accepted, hot ones are not.
    assert code[0] == code[1] and chat[0] < chat[1]
    assert total(after, "spec_tap_errors_total") == 0
    # The exporter's per-class series are the middleware's, and its modelled speedup ranks the classes.
    for workload, (_, band), sums in (("code", CODE, code), ("chat", CHAT, chat)):
        labels = {"workload": workload, "temperature_band": band}
        assert total(ours, "spec_decode_request_accepted_tokens_total", **labels) >= sums[0]
    speedup = "spec_decode_request_expected_speedup"
    greedy = total(ours, speedup, workload="code", temperature_band=CODE[1], window="10m")
    hot = total(ours, speedup, workload="chat", temperature_band=CHAT[1], window="10m")
    assert 0 < hot < greedy, (hot, greedy)
    # What decides acceptance besides temperature, from vLLM's own config.
    info = [dict(labels) for (name, labels), v in after.items() if name == "spec_tap_speculative_config_info" and v]
    assert len(info) == 1 and info[0]["method"] == "draft_model" and int(info[0]["num_speculative_tokens"]) > 0
    assert total(ours, "spec_decode_speculative_config_info", method="draft_model") == 1
