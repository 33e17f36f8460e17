"""The middleware against vLLM itself, as an adversarial reviewer would try it: two real vLLM servers from the
trained pair, `plain` without the middleware and `tapped` with it, behind `--root-path /api`, with two API server
processes, a custom `--fingerprint-value` that needs JSON escapes, and every SPEC_EXPORTER_TAP_* variable set to
garbage (the middleware must log, default and serve). The same greedy requests go to both and the full answers
are compared: status, Content-Length, and every byte of the body but the per-run fields and what the draft model
decides (two vLLM processes do not compute bit for bit alike, so the draft's acceptances, hence where a stream's
text is cut into chunks and the acceptance numbers, differ; the joined text is compared on its own). Then a mixed
run on `tapped` shows where every draft token vLLM counted went: into a temperature band the middleware measured,
or into a request it counted under the reason it could not.
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
from tests.real.test_real_middleware import MIDDLEWARE, ON_PATH

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


# What the draft model decides, which differs between two vLLM processes even at temperature 0 (the CPU build's
# float32 kernels are not bitwise reproducible across processes, and a small draft meets near-ties): how many
# tokens each verification step accepts, so how the text is cut into chunks, and the request's acceptance numbers.
_TEXT = re.compile(rb'"(content|text)":"(?:[^"\\]|\\.)*"')
_SPEC = re.compile(rb'"speculative_decoding":\{[^{}]*\}')


def _in_choice_order(answer: bytes) -> list[bytes]:
    """A stream's events in the order of their choice's index (stable): vLLM interleaves several prompts' events as
    they come, differently from run to run."""
    events = [e + b"\n\n" for e in answer.split(b"\n\n") if e]

    def key(item: tuple[int, bytes]) -> tuple[int, int, int]:
        position, event = item
        m = _CHOICE_INDEX.search(event)
        return (0, int(m[1]), position) if m else (1, 0, position)

    return [e for _, e in sorted(enumerate(events), key=key)]


def same_run(answer: bytes) -> bytes:
    """The answer without its per-run fields and what the draft decides: texts masked (`texts` compares them),
    consecutive chunks that are then alike collapsed, speculative numbers masked. Every other byte stays: the
    fields of each kind of chunk, where the fingerprint is, the usage chunk, the framing."""
    answer = _SPEC.sub(b'"speculative_decoding":_', _TEXT.sub(rb'"\1":_', PER_RUN.sub(rb'"\1":_', answer)))
    if not answer.startswith(b"data: "):
        return answer
    events: list[bytes] = []
    for event in _in_choice_order(answer):
        if not events or events[-1] != event:
            events.append(event)
    return b"".join(events)


def texts(answer: bytes) -> bytes:
    """The answer's texts, in choice order, as vLLM serialised them."""
    if answer.startswith(b"data: "):
        answer = b"".join(_in_choice_order(answer))
    return b"|".join(m[0].split(b":", 1)[1][1:-1] for m in _TEXT.finditer(answer))


def around(got: bytes, want: bytes) -> tuple[bytes, bytes]:
    """Both answers around their first difference, for the failure message."""
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return got[max(0, at - 150) : at + 150], want[max(0, at - 150) : at + 150]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VLLM, VLLM]]:
    logs = tmp_path_factory.mktemp("differential")
    with (
        running_vllm(logs / "plain.log", extra_args=COMMON) as plain,
        running_vllm(
            logs / "tapped.log",
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


def stop_string(server: VLLM, late: bool) -> str:
    """A stop string the server's greedy answer meets: a piece of it, early (before the two servers' texts might
    part) or in the middle (so that the request drafts before vLLM stops it there, short of its last step)."""
    _, _, body = fetch(server.url + "/v1/chat/completions", chat())
    text = json.loads(body)["choices"][0]["message"]["content"]
    assert len(text) >= 12, text
    middle = len(text) // 2
    return text[middle - 2 : middle + 3] if late else text[1:6]


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
        "validation-400-own-stream-options": (
            "/v1/chat/completions",
            j({"model": "tiny", "stream": True, "stream_options": {"include_usage": False}}),
            {},
        ),
        "chat-stream-usage-false": (
            "/v1/chat/completions",
            chat(stream=True, stream_options={"include_usage": False}),
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
    for name, (path, body, headers) in cases(stop_string(plain, late=False)).items():
        want = fetch(plain.url + path, body, headers)
        # Through the root path and without it: vLLM routes both.
        for prefix in (ROOT_PATH, ""):
            got = fetch(tapped.url + prefix + path, body, headers)
            assert got[0] == want[0], (name, prefix, got[2][:300], want[2][:300])
            assert same_run(got[2]) == same_run(want[2]), (name, prefix, around(same_run(got[2]), same_run(want[2])))
            # A stream's text is cut where the draft's acceptances fall; joined, it is the greedy text.
            assert texts(got[2]).replace(b"|", b"") == texts(want[2]).replace(b"|", b""), (name, prefix)
            # Framed alike (the lengths themselves differ with the timings' digits), and truly.
            assert ("content-length" in got[1]) == ("content-length" in want[1]), (name, prefix)
            if "content-length" in got[1]:
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
    _, tapped = servers
    stop = stop_string(tapped, late=True)
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
            [("/v1/chat/completions", chat(stop=[stop])), ("/v1/chat/completions", chat(stop=[stop, "\x00"]))],
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
    joined = 0.0
    unmeasured: dict[str, float] = {}
    for label, requests, outcome in mix:
        before = samples(url)
        # A stop string met in the step where the engine also ends the request (its last tokens) comes back with
        # vLLM's numbers after all: such an answer is measured, and says so.
        reported = 0.0
        for path, body in requests:
            status, _, answer = fetch(url + ROOT_PATH + path, body)
            assert status == 200, (label, path)
            if label == "stop string":
                stopped = b'"stop_reason":' + json.dumps(stop, ensure_ascii=False).encode()
                assert stopped in answer, ("the greedy answer did not meet its own stop string", answer[-400:])
                spec = (json.loads(answer).get("metrics") or {}).get("speculative_decoding")
                reported += spec["num_draft_tokens"] if spec else 0
        after = phase(url, before)
        engine = total(after, VLLM_DRAFTED) - total(before, VLLM_DRAFTED)
        tap = total(after, DRAFTED) - total(before, DRAFTED)
        counted = total(after, REQUESTS, outcome=outcome) - total(before, REQUESTS, outcome=outcome)
        assert engine > 0, label
        if outcome == "measured":
            assert counted == len(requests), (label, counted)
            assert tap == engine, label  # every draft token into a band
        else:
            measured = total(after, REQUESTS, outcome="measured") - total(before, REQUESTS, outcome="measured")
            assert counted + measured == len(requests) and counted > 0, (label, counted, measured)
            assert tap == reported, label  # the rest of them under this reason
        joined += tap
        unmeasured[label] = engine - tap
    end = samples(url)
    engine_total = total(end, VLLM_DRAFTED) - total(start, VLLM_DRAFTED)
    per_band = {
        band: total(end, DRAFTED, temperature_band=band) - total(start, DRAFTED, temperature_band=band)
        for band in ("0", "0-0.3", "0.3-0.5", "0.5-0.7", "0.7-1.0", "1.0+")
    }
    # Joined per band, or unmeasured by reason: nothing unexplained.
    assert sum(per_band.values()) == joined, (per_band, joined)
    assert engine_total == joined + sum(unmeasured.values()), (engine_total, joined, unmeasured)
    assert all(v > 0 for label, v in unmeasured.items() if label != "measured"), unmeasured
    assert {b for b, v in per_band.items() if v} == {"0", "0.3-0.5", "0.7-1.0", "1.0+"}
    assert total(end, "spec_tap_errors_total") == total(start, "spec_tap_errors_total")
