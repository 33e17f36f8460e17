"""Reading a completion request the way vLLM will, and deciding whether to ask vLLM for the usage chunk (pure).

vLLM validates requests with pydantic models in lax mode (0.32: `ChatCompletionRequest`, `CompletionRequest`,
`StreamOptions` in vllm/entrypoints/{openai,generate}/...), so `"0.7"` is a temperature, `"true"` or `1` is a true
`stream` / `include_usage`, `"2"` is an `n`. Each field the tap needs is read with the same type and defaults, or
the band, and whether the client gets a usage chunk, would disagree with what vLLM actually does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from spec_exporter.tap.temperature_bands import INVALID, UNKNOWN, TemperatureBands

# The endpoints whose responses carry metrics.speculative_decoding in vLLM.
INSPECTED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
# vLLM 0.32's other POST endpoints that make the engine generate (so draft), whose answers carry no per-request
# speculative metrics (/v1/responses: timing only; /inference/v1/generate: only behind its own flag, in a
# token-in, token-out format; /invocations: SageMaker's router, which may send a body to either kind): counted
# as outcome other_endpoint, so the engine's draft tokens they account for are seen to go somewhere.
OTHER_GENERATING_PATHS = frozenset(
    {
        "/v1/responses",
        "/v1/messages",
        "/v1/chat/completions/batch",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/cohere/v2/chat",
        "/generative_scoring",
        "/v1/systemone",
        "/inference/v1/generate",
        "/invocations",
    }
)

_FLOAT = TypeAdapter(float | None)
_BOOL = TypeAdapter(bool | None)
_INT = TypeAdapter(int | None)
_STR = TypeAdapter(str | None)
# Values of exactly these types pydantic returns unchanged: skip the validator for them (the common case).
_EXACT: dict[int, tuple[type, ...]] = {id(_BOOL): (bool,), id(_INT): (int,), id(_STR): (str,)}


class _StreamOptions(BaseModel):
    # vLLM's StreamOptions: an OpenAIBaseModel (extra fields allowed) with two lax bools defaulting to False.
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class NotUnderstood(ValueError):
    """Input the tap cannot read; it is passed through untouched all the same."""


@dataclass(frozen=True, slots=True)
class RequestView:
    model: str | None
    temperature_band: str
    n: int
    stream: bool
    # What vLLM will do with stream_options (should_include_usage in vllm/entrypoints/serve/utils/api_utils.py).
    client_wants_usage: bool
    continuous_usage: bool
    # False when vLLM will reject the request anyway (a field it cannot validate).
    valid: bool
    injected_usage: bool
    upstream_body: bytes
    # A completion with more than one prompt: vLLM reports no per-request metrics for it.
    several_prompts: bool = False
    # The injection added a member (INJECTED_MEMBER) rather than merging into the client's stream_options.
    added_member: bool = False


def temperature_band(raw: Any, bands: TemperatureBands) -> str:
    """The band of a request's `temperature` field as vLLM would read it; missing or null takes the default."""
    if type(raw) is float or type(raw) is int:
        value: float | None = float(raw)
    else:
        try:
            value = _FLOAT.validate_python(raw)
        except ValidationError:
            return INVALID
    return bands.band_of(bands.default_temperature if value is None else value)


def identity_only(accept_encoding: str | None) -> bool:
    """Whether a client with this Accept-Encoding can only be answered unencoded (RFC 9110 §12.5.3).

    Absent or empty means identity; otherwise every coding it accepts with q > 0 must be `identity`. The usage
    chunk cannot be taken out of a compressed body, so the proxy only injects when the answer cannot be one.
    """
    if accept_encoding is None:
        return True
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding or coding == "identity":
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    return False
        if q > 0:
            return False
    return True


def _lax(adapter: TypeAdapter[Any], raw: Any, default: Any) -> tuple[Any, bool]:
    if raw is None or type(raw) in _EXACT.get(id(adapter), ()):
        return raw, True
    try:
        value = adapter.validate_python(raw)
    except ValidationError:
        return default, False
    return value, True


def _stream_options(raw: Any) -> tuple[_StreamOptions | None, bool]:
    if raw is None:
        return None, True
    try:
        return _StreamOptions.model_validate(raw), True
    except ValidationError:
        return None, False


# What the tap adds to a body, right after its opening brace (see `_injected_body`).
INJECTED_MEMBER = b'"stream_options":{"include_usage":true},'


def _injected_body(body: bytes, present: bool, options: Any) -> bytes | None:
    """The client's bytes with `stream_options.include_usage: true` added, or None if that cannot be done safely.

    Only the one member is added; every other byte reaches vLLM as the client sent it. Without stream_options it
    goes first (INJECTED_MEMBER: the body then has one member more, which tap/echo.py takes out of vLLM's
    validation echo); with one, a merged copy goes last, where json.loads (which vLLM's FastAPI uses for the body)
    lets the last of duplicate keys win, and the body keeps its number of members.
    """
    if json.detect_encoding(body) not in ("utf-8", "utf-8-sig"):
        return None
    if not present:
        start = body.find(b"{")
        return body[: start + 1] + INJECTED_MEMBER + body[start + 1 :]
    if options is not None and not isinstance(options, dict):
        return None
    end = body.rfind(b"}")
    merged = json.dumps({**(options or {}), "include_usage": True}, separators=(",", ":")).encode()
    return body[:end] + b',"stream_options":' + merged + body[end:]


class _TopLevel(BaseModel):
    """The few top-level members the tap reads, pulled out of the body by pydantic-core's JSON parser (Rust).

    Every other member, the messages or prompt that make a body large, is parsed and checked there but never
    becomes a Python object: json.loads of a 7 MB body builds millions of them and holds the event loop several
    times as long. Each member stays `Any` so `read_request` applies vLLM's lax types to it exactly as before.
    """

    model_config = ConfigDict(extra="ignore")
    model: Any = None
    stream: Any = False
    n: Any = 1
    stream_options: Any = None
    temperature: Any = None
    prompt: Any = None


def _top_level(body: bytes) -> tuple[_TopLevel, frozenset[str]]:
    """The top-level members and which of them the body has; NotUnderstood where vLLM's json.loads would fail."""
    encoding = json.detect_encoding(body)
    text = body
    if encoding != "utf-8":
        # json.loads (which vLLM's FastAPI uses) reads UTF-16/32 and a UTF-8 BOM; the Rust parser only plain UTF-8.
        try:
            text = body.decode(encoding).encode("utf-8", "surrogatepass")
        except (UnicodeError, LookupError) as e:
            raise NotUnderstood(f"request body is not JSON: {type(e).__name__}") from None
    try:
        top = _TopLevel.model_validate_json(text)
    except ValidationError as e:
        if e.errors()[0]["type"] == "model_type":
            raise NotUnderstood("request body is not a JSON object") from None
        # What json.loads accepts and the Rust parser does not (an escaped lone surrogate, nesting deeper than
        # its limit): rare, so read as vLLM will, the slow way.
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e2:
            raise NotUnderstood(f"request body is not JSON: {type(e2).__name__}") from None
        if not isinstance(data, dict):
            raise NotUnderstood("request body is not a JSON object") from None
        fields = {k: data[k] for k in _TopLevel.model_fields if k in data}
        top = _TopLevel.model_validate(fields)
    return top, frozenset(top.model_fields_set)


def several_prompts(prompt: Any) -> bool:
    """Whether a completion's `prompt` holds more than one prompt (a list of strings or of token lists); vLLM
    then answers without per-request speculative-decoding metrics."""
    return isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int)


def read_request(
    body: bytes, bands: TemperatureBands, *, inject_usage: bool, may_encode: bool, encoded: bool = False
) -> RequestView:
    """What the tap needs from a completion request, and the body to send upstream.

    `may_encode`: the answer to this request could arrive content-encoded, so nothing is injected. `encoded`: the
    body is labelled with a Content-Encoding; vLLM ignores the label and reads the bytes as they are, and so does
    the tap, but it never rewrites them.
    """
    top, present = _top_level(body)
    model, ok_model = _lax(_STR, top.model, None)
    stream, ok_stream = _lax(_BOOL, top.stream, False)
    n, ok_n = _lax(_INT, top.n, 1)
    options, ok_options = _stream_options(top.stream_options)
    valid = ok_model and ok_stream and ok_n and ok_options
    stream = bool(stream)
    n = 1 if n is None else n
    # vLLM: include_usage = bool(options.include_usage); continuous only together with it.
    wants_usage = bool(options and options.include_usage)
    continuous = bool(options and options.continuous_usage_stats)
    several = several_prompts(top.prompt)
    upstream_body = None
    if (
        inject_usage
        and valid
        and stream
        and n == 1
        # No per-request metrics would come back, and each prompt's terminal chunk would need its fingerprint.
        and not several
        and not wants_usage
        # Injecting include_usage next to continuous_usage_stats would put usage into every chunk the client gets.
        and not continuous
        and not may_encode
        and not encoded
    ):
        upstream_body = _injected_body(body, "stream_options" in present, top.stream_options)
    return RequestView(
        model=model,
        temperature_band=temperature_band(top.temperature, bands),
        n=n,
        stream=stream,
        client_wants_usage=wants_usage,
        continuous_usage=continuous,
        valid=valid,
        injected_usage=upstream_body is not None,
        upstream_body=body if upstream_body is None else upstream_body,
        added_member=upstream_body is not None and "stream_options" not in present,
        several_prompts=several,
    )


__all__ = [
    "INJECTED_MEMBER",
    "INSPECTED_PATHS",
    "OTHER_GENERATING_PATHS",
    "UNKNOWN",
    "NotUnderstood",
    "RequestView",
    "identity_only",
    "read_request",
    "several_prompts",
]
