"""The middleware against vLLM itself, as an adversarial reviewer would try it: two real vLLM servers from the
trained pair, `plain` without the middleware and `tapped` with it, behind `--root-path /api`, with two API server
processes, a custom `--fingerprint-value` that needs JSON escapes, and every SPEC_EXPORTER_TAP_* variable set to
garbage (the middleware must log, default and serve). The same greedy requests go to both and the full answers
are compared: status, body (per-run fields aside) and Content-Length. Then a mixed run on `tapped` shows where
every draft token vLLM counted went: into a temperature band the middleware measured, or into a request it counted
under the reason it could not.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.vllm import VLLM, running_vllm
from tests.real.scrape import Samples, samples, total
from tests.real.test_real_middleware import MIDDLEWARE, ON_PATH, START_TIMEOUT

pytestmark = pytest.mark.real

ROOT_PATH = "/api"
FINGERPRINT = 'spec "exporter" \\ fp-ü'
# Both servers alike but for the middleware's options. Without the prefix cache, the same greedy request computes
# the same way whether its prompt was seen before or not (a cache hit takes another path, which can change a
# float32 logit's last bits and so the greedy token).
COMMON = ("--fingerprint-mode", "custom", "--fingerprint-value", FINGERPRINT, "--no-enable-prefix-caching")
GARBAGE = {
    f"SPEC_EXPORTER_TAP_{name}": "garbage"
    for name in ("TEMPERATURE_BANDS", "DEFAULT_TEMPERATURE", "MAX_MODELS", "MAX_INSPECT_BYTES", "INJECT_USAGE")
}
PROMPT = "def parse_args(argv):\n    "
MESSAGES = [{"role": "user", "content": "def read_config(path):"}]
DRAFTED, VLLM_DRAFTED = "spec_tap_draft_tokens_total", "vllm:spec_decode_num_draft_tokens_total"
REQUESTS = "spec_tap_requests_total"
# What differs between two runs of the same greedy request: ids, creation times, timings.
PER_RUN = re.compile(
    rb'"(id|created|created_at|time_to_first_token_ms|generation_time_ms|queue_time_ms|mean_itl_ms|'
    rb'tokens_per_second)":("[^"]*"|[0-9.eE+-]+)'
)


def fetch(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, bytes(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, bytes(e.read())


_CHOICE_INDEX = re.compile(rb'"choices":\[\{"index":(\d+)')


def same_run(answer: bytes) -> bytes:
    """The answer without its per-run fields. A stream's events are put in the order of their choice's index (stable):
    vLLM interleaves the events of several prompts as they come, differently from run to run."""
    answer = PER_RUN.sub(rb'"\1":_', answer)
    if not answer.startswith(b"data: "):
        return answer
    events = [e + b"\n\n" for e in answer.split(b"\n\n") if e]

    def key(item: tuple[int, bytes]) -> tuple[int, int, int]:
        position, event = item
        m = _CHOICE_INDEX.search(event)
        return (0, int(m[1]), position) if m else (1, 0, position)

    return b"".join(e for _, e in sorted(enumerate(events), key=key))


def around(got: bytes, want: bytes) -> tuple[bytes, bytes]:
    """Both answers around their first difference, for the failure message."""
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return got[max(0, at - 150) : at + 150], want[max(0, at - 150) : at + 150]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VLLM, VLLM]]:
    logs = tmp_path_factory.mktemp("differential")
    with (
        running_vllm(logs / "plain.log", timeout=START_TIMEOUT, extra_args=COMMON) as plain,
        running_vllm(
            logs / "tapped.log",
            timeout=START_TIMEOUT,
            api_servers=2,
            extra_args=(*MIDDLEWARE, *COMMON, "--root-path", ROOT_PATH),
            env={**ON_PATH, **GARBAGE},
        ) as tapped,
    ):
        yield plain, tapped


def j(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def chat(**extra: Any) -> bytes:
    return j({"model": "tiny", "messages": MESSAGES, "max_tokens": 16, "temperature": 0, **extra})


def completion(**extra: Any) -> bytes:
    return j({"model": "tiny", "prompt": PROMPT, "max_tokens": 16, "temperature": 0, **extra})


def stop_string(plain: VLLM) -> str:
    """A stop string the greedy answer is certain to meet: a piece of that answer."""
    _, _, body = fetch(plain.url + "/v1/chat/completions", chat())
    text = json.loads(body)["choices"][0]["message"]["content"]
    # Near the end, so that the request runs (and drafts) for most of its tokens before vLLM stops it there.
    assert len(text) >= 12, text
    return text[-8:-3]


def cases(stop: str) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    usage = {"stream_options": {"include_usage": True}}
    return {
        "chat-stream": ("/v1/chat/completions", chat(stream=True), {}),
        "chat-stream-usage": ("/v1/chat/completions", chat(stream=True, **usage), {}),
        "completion-stream": ("/v1/completions", completion(stream=True), {}),
        "several-prompts": ("/v1/completions", completion(prompt=[PROMPT, "import os\n"]), {}),
        "several-prompts-stream": ("/v1/completions", completion(prompt=[PROMPT, "import os\n"], stream=True), {}),
        "several-prompts-stream-usage": (
            "/v1/completions",
            completion(prompt=[PROMPT, "import os\n"], stream=True, **usage),
            {},
        ),
        "validation-400": ("/v1/chat/completions", j({"model": "tiny", "stream": True}), {}),
        "validation-400-nine-members": (
            "/v1/chat/completions",
            j({"model": "tiny", "stream": True, **{f"x{i}": i for i in range(7)}}),
            {},
        ),
        "stop-string": ("/v1/chat/completions", chat(stop=[stop]), {}),
        "stop-string-stream": ("/v1/chat/completions", chat(stop=[stop], stream=True), {}),
        "responses": (
            "/v1/responses",
            j({"model": "tiny", "input": "def main():", "max_output_tokens": 16, "temperature": 0}),
            {},
        ),
        "messages": (
            "/v1/messages",
            j({"model": "tiny", "max_tokens": 16, "temperature": 0, "messages": MESSAGES}),
            {},
        ),
        "utf16-stream": ("/v1/chat/completions", chat(stream=True).decode().encode("utf-16"), {}),
        "gzip-label-on-a-plain-body": ("/v1/chat/completions", chat(stream=True), {"Content-Encoding": "gzip"}),
        "really-gzipped": ("/v1/chat/completions", gzip.compress(chat(stream=True)), {"Content-Encoding": "gzip"}),
    }


def test_every_answer_is_the_one_vllm_gives_without_the_middleware(servers: tuple[VLLM, VLLM]) -> None:
    plain, tapped = servers
    for name, (path, body, headers) in cases(stop_string(plain)).items():
        want = fetch(plain.url + path, body, headers)
        # Through the root path and without it: vLLM routes both.
        for prefix in (ROOT_PATH, ""):
            got = fetch(tapped.url + prefix + path, body, headers)
            assert got[0] == want[0], (name, prefix, got[2][:300], want[2][:300])
            assert same_run(got[2]) == same_run(want[2]), (name, prefix, around(same_run(got[2]), same_run(want[2])))
            assert got[1].get("content-length") == want[1].get("content-length"), (name, prefix)
            if got[1].get("content-length") is not None:
                assert int(got[1]["content-length"]) == len(got[2]), name
        if name.endswith("-stream") and name != "utf16-stream":
            assert b'"usage":{' not in want[2]
    log = Path(str(tapped.log)).read_text(errors="replace")
    for variable in GARBAGE:
        assert f"spec_exporter: ignoring {variable}='garbage'" in log, variable
    assert MESSAGES[0]["content"] not in log and PROMPT.strip() not in log


def phase(url: str, before: Samples, timeout: float = 60) -> Samples:
    """/metrics once vLLM's draft counter has stopped moving (bounded): every request sent has been folded."""
    deadline = time.monotonic() + timeout
    last = samples(url)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = samples(url)
        if total(now, VLLM_DRAFTED) == total(last, VLLM_DRAFTED) and total(now, REQUESTS) > total(before, REQUESTS):
            return now
        last = now
    return last


def test_metrics_show_where_every_engine_draft_token_went(servers: tuple[VLLM, VLLM]) -> None:
    plain, tapped = servers
    stop = stop_string(plain)
    url = tapped.url
    # (what is sent, how many, the outcome it must be counted as)
    mix: list[tuple[str, list[tuple[str, bytes]], str]] = [
        (
            "measured",
            [
                ("/v1/chat/completions", chat(temperature=0.0)),
                ("/v1/chat/completions", chat(temperature=0.4, stream=True)),
                ("/v1/completions", completion(temperature=0.8)),
                ("/v1/completions", completion(temperature=1.0, stream=True)),
            ],
            "measured",
        ),
        (
            "stop string",
            [("/v1/chat/completions", chat(stop=[stop])), ("/v1/chat/completions", chat(stop=[stop], stream=True))],
            "unreported",
        ),
        ("several prompts", [("/v1/completions", completion(prompt=[PROMPT, "import os\n"]))], "unreported"),
        ("n > 1", [("/v1/completions", completion(n=2, temperature=0.5))], "not_measurable"),
        (
            "other endpoints",
            [
                ("/v1/responses", j({"model": "tiny", "input": "def main():", "max_output_tokens": 16})),
                ("/v1/messages", j({"model": "tiny", "max_tokens": 16, "messages": MESSAGES})),
            ],
            "other_endpoint",
        ),
    ]
    start = samples(url)
    went: dict[str, float] = {}
    for label, requests, outcome in mix:
        before = samples(url)
        for path, body in requests:
            status, _, _ = fetch(url + ROOT_PATH + path, body)
            assert status == 200, (label, path)
        after = phase(url, before)
        engine = total(after, VLLM_DRAFTED) - total(before, VLLM_DRAFTED)
        tap = total(after, DRAFTED) - total(before, DRAFTED)
        counted = total(after, REQUESTS, outcome=outcome) - total(before, REQUESTS, outcome=outcome)
        assert counted == len(requests), (label, counted)
        assert engine > 0, label
        if outcome == "measured":
            assert tap == engine, label  # every draft token into a band
        else:
            assert tap == 0, label  # none measured: all of them under this reason
        went[label] = engine
    end = samples(url)
    engine_total = total(end, VLLM_DRAFTED) - total(start, VLLM_DRAFTED)
    per_band = {
        band: total(end, DRAFTED, temperature_band=band) - total(start, DRAFTED, temperature_band=band)
        for band in ("0", "0-0.3", "0.3-0.5", "0.5-0.7", "0.7-1.0", "1.0+")
    }
    # Joined per band, or unmeasured by reason: nothing unexplained.
    assert sum(per_band.values()) == went["measured"]
    assert engine_total == sum(went.values())
    assert {b for b, v in per_band.items() if v} == {"0", "0.3-0.5", "0.7-1.0", "1.0+"}
    assert total(end, "spec_tap_errors_total") == total(start, "spec_tap_errors_total")
