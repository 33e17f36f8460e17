"""What vLLM 0.32 answers to a completion request, built from the real captured responses in
tests/fixtures/vllm-responses: the stand-in behind both tap front ends in the tests (an ASGI app for the
middleware, an aiohttp server for the proxy).

It reads the request as vLLM does (the same lax pydantic types) and follows vLLM's streaming rules
(vllm/entrypoints/openai/{chat_completion,completion}/serving.py): the usage chunk only with
`stream_options.include_usage`; `usage` in every chunk with `continuous_usage_stats` as well; the
`system_fingerprint` on the terminal chunk when there is no usage chunk, else on the usage chunk.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

RESPONSES = Path(__file__).parent / "fixtures" / "vllm-responses"


def fixture(name: str) -> bytes:
    return (RESPONSES / name).read_bytes()


CHAT_JSON = fixture("chat_nonstream_t0.7.json")
COMPLETION_JSON = fixture("completion_nonstream_t1.0.json")
N2_JSON = fixture("completion_n2.json")
STREAM_USAGE = fixture("chat_stream_usage_t0.4.sse")
STREAM_NO_USAGE_CAPTURED = fixture("chat_stream_nousage_t0.4.sse")


def sse_events(body: bytes) -> list[bytes]:
    """The events of a LF-framed SSE body, each with its blank-line terminator."""
    return [part + b"\n\n" for part in body.split(b"\n\n") if part]


def usage_event(body: bytes = STREAM_USAGE) -> bytes:
    (event,) = [e for e in sse_events(body) if b'"choices":[]' in e]
    return event


def usage_chunk(body: bytes = STREAM_USAGE) -> dict[str, Any]:
    return json.loads(usage_event(body).removeprefix(b"data: "))


FINGERPRINT = usage_chunk()["system_fingerprint"]


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    n: int | None = 1
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    temperature: float | None = None
    stop: str | list[str] | None = None
    prompt: Any = None


def _stop_string(request: _Request) -> str | None:
    stop = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    return stop[0] if stop else None


def _several_prompts(request: _Request) -> int:
    prompt = request.prompt
    return len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1


def _without_spec_metrics(usage_event: bytes) -> bytes:
    """The usage event as vLLM writes it when it has no speculative numbers for the request (exclude_none)."""
    obj = json.loads(usage_event.removeprefix(b"data: "))
    del obj["metrics"]["speculative_decoding"]
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def stream_events(
    include_usage: bool,
    continuous: bool,
    stop: str | None = None,
    prompts: int = 1,
    fingerprint: str = FINGERPRINT,
) -> list[bytes]:
    """The captured stream as vLLM renders it for these stream_options; `stop`: it ended on that stop string (vLLM
    then has no per-request speculative numbers); `prompts`: a completion with that many prompts, each prompt's
    events interleaved, the later ones one event longer (vLLM reports no per-request metrics for it);
    `fingerprint`: vLLM's `--fingerprint-value` (serialised as pydantic does: escaped, non-ASCII as it is)."""
    token = json.dumps(fingerprint, ensure_ascii=False).encode()
    token_events = [e for e in sse_events(STREAM_USAGE) if b'"choices":[]' not in e and e != b"data: [DONE]\n\n"]
    if stop is not None:
        stop_json = json.dumps(stop).encode()
        token_events[-1] = token_events[-1].replace(
            b'"finish_reason":"length","stop_reason":null', b'"finish_reason":"stop","stop_reason":' + stop_json
        )
    usage = usage_chunk()["usage"]
    per_prompt: list[list[bytes]] = []
    for p in range(prompts):
        events = [e.replace(b'"index":0', b'"index":%d' % p) for e in token_events]
        if p:
            events.insert(-1, events[-2])  # one token more: its terminal chunk comes after the first prompt's
        per_prompt.append(events)
    ordered = [e for k in range(max(map(len, per_prompt))) for events in per_prompt for e in events[k : k + 1]]
    out = []
    for k, event in enumerate(ordered):
        terminal = b'"finish_reason":null' not in event
        tail = b""
        if continuous:
            running = {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["prompt_tokens"] + k}
            tail += b',"usage":' + json.dumps({**running, "completion_tokens": k}, separators=(",", ":")).encode()
        if terminal and not include_usage:
            tail += b',"system_fingerprint":' + token
        end = event.rfind(b"}")
        out.append(event[:end] + tail + event[end:])
    if include_usage:
        usage = usage_event() if stop is None and prompts == 1 else _without_spec_metrics(usage_event())
        out.append(
            usage.replace(b'"system_fingerprint":"' + FINGERPRINT.encode() + b'"', b'"system_fingerprint":' + token)
        )
    out.append(b"data: [DONE]\n\n")
    return out


def validation_error(data: dict[str, Any], missing: str) -> Answer:
    """vLLM 0.32's 400 for a body without a required member (its validation_exception_handler; the real answer is
    fixtures/vllm-responses/validation_missing_messages.json): the body is echoed only as its size."""
    item = {
        "type": "missing",
        "loc": f"body.{missing}",
        "msg": "Field required",
        "input": f"<dict of {len(data)} items>",
    }
    message = f"1 validation error:\n  {item}"
    body = {"error": {"message": message, "type": "Bad Request", "param": f"body.{missing}", "code": 400}}
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Answer(400, [("content-length", str(len(payload))), ("content-type", "application/json")], [payload])


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    chunks: list[bytes]


def _error(status: int, message: str) -> Answer:
    body = json.dumps({"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}})
    return Answer(status, [("content-type", "application/json")], [body.encode()])


@dataclass
class VLLMStandIn:
    """Answers like vLLM; records every body it received. `chunks`: how the stream is cut into messages."""

    received: list[bytes] = field(default_factory=list)
    status: int | None = None
    json_chunk_size: int | None = None
    # Re-frames each SSE event (e.g. LF -> CRLF) as a server with other line endings would write it.
    frame: Callable[[bytes], bytes] | None = None
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    def answer(self, path: str, body: bytes) -> Answer:
        self.received.append(body)
        if self.status is not None:
            return _error(self.status, "scripted failure")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "invalid JSON body")
        if not isinstance(data, dict):
            return _error(400, "body is not an object")
        if data.get("stream_options") and not data.get("stream"):
            return _error(400, "Stream options can only be defined when `stream=True`.")
        if path.endswith("chat/completions") and "messages" not in data:
            return validation_error(data, "messages")
        try:
            request = _Request.model_validate(data)
        except ValidationError as e:
            return _error(400, str(e.errors()[0]["msg"]))
        t = request.temperature
        if t is not None and not (math.isfinite(t) and 0 <= t <= 2):
            return _error(400, f"temperature must be in [0, 2], got {t}.")
        stop, prompts = _stop_string(request), _several_prompts(request)
        if request.stream:
            options = request.stream_options
            include = bool(options and options.include_usage)
            continuous = include and bool(options and options.continuous_usage_stats)
            events = stream_events(include, continuous, stop, prompts)
            return Answer(
                200,
                [("content-type", "text/event-stream; charset=utf-8"), *self.extra_headers],
                [self.frame(e) for e in events] if self.frame else events,
            )
        if (request.n or 1) > 1:
            payload = N2_JSON
        else:
            payload = CHAT_JSON if path.endswith("chat/completions") else COMPLETION_JSON
            if stop is not None or prompts > 1:
                payload = _unreported(payload, stop, prompts)
        size = self.json_chunk_size or len(payload)
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
        headers = [("content-type", "application/json"), ("content-length", str(len(payload))), *self.extra_headers]
        return Answer(200, headers, chunks)


def _unreported(payload: bytes, stop: str | None, prompts: int) -> bytes:
    """A JSON answer vLLM has no per-request speculative numbers for: it ended on a stop string (metrics without
    them), or it had several prompts (no per-request metrics at all)."""
    obj = json.loads(payload)
    if prompts > 1:
        obj["choices"] = [{**obj["choices"][0], "index": i} for i in range(prompts)]
        obj["metrics"] = None
    else:
        obj["choices"][0].update(finish_reason="stop", stop_reason=stop)
        obj["metrics"]["speculative_decoding"] = None
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def direct(path: str, body: bytes, standin: VLLMStandIn | None = None) -> bytes:
    """The body a client gets from vLLM with no tap in between."""
    template = standin or VLLMStandIn()
    fresh = VLLMStandIn(status=template.status, json_chunk_size=template.json_chunk_size, frame=template.frame)
    return b"".join(fresh.answer(path, body).chunks)
