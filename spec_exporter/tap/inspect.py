"""Reading an OpenAI-style request and vLLM's response: temperature band in, per-request spec metrics out (pure).

Nothing here raises past its caller's `try`: the proxy passes the original bytes through whatever happens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from spec_exporter.tap.bands import INVALID, Bands

# The endpoints whose responses carry metrics.speculative_decoding in vLLM.
INSPECTED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})

# vLLM validates requests with pydantic models in lax mode, so "0.7" and true are numbers to it: read the
# temperature the same way it will, or the band would disagree with what vLLM actually sampled at.
_TEMPERATURE = TypeAdapter(float | None)


class NotUnderstood(ValueError):
    """The body is not something the tap can read; it is passed through untouched all the same."""


@dataclass(frozen=True, slots=True)
class RequestView:
    model: str | None
    temperature_band: str
    n: int
    stream: bool
    client_wants_usage: bool
    injected_usage: bool
    upstream_body: bytes


def temperature_band(raw: Any, bands: Bands) -> str:
    """The band of a request's `temperature` field as vLLM would read it; missing or null takes the default."""
    try:
        value = _TEMPERATURE.validate_python(raw)
    except ValidationError:
        return INVALID
    return bands.band_of(bands.default_temperature if value is None else value)


def read_request(body: bytes, bands: Bands, inject_usage: bool) -> RequestView:
    """What the tap needs from a completion request, and the body to send upstream."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise NotUnderstood(f"request body is not JSON: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise NotUnderstood("request body is not a JSON object")
    model = data.get("model")
    n = data.get("n", 1)
    n = n if isinstance(n, int) and not isinstance(n, bool) else 1
    stream = data.get("stream") is True
    options = data.get("stream_options")
    client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    inject = (
        stream and inject_usage and not client_wants_usage and n == 1 and (options is None or isinstance(options, dict))
    )
    upstream_body = body
    if inject:
        data["stream_options"] = {**(options or {}), "include_usage": True}
        upstream_body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return RequestView(
        model=model if isinstance(model, str) else None,
        temperature_band=temperature_band(data.get("temperature"), bands),
        n=n,
        stream=stream,
        client_wants_usage=client_wants_usage,
        injected_usage=inject,
        upstream_body=upstream_body,
    )


@dataclass(frozen=True, slots=True)
class SpecResult:
    """One response's per-request numbers; `accepted`/`drafted` are None when vLLM sent no spec metrics."""

    model: str | None
    accepted: int | None
    drafted: int | None
    ttft_seconds: float | None
    tpot_seconds: float | None
    completion_tokens: int | None
    # Verification steps (num_spec_steps): the denominator of the request's mean acceptance length.
    steps: int | None = None

    @property
    def acceptance_rate(self) -> float | None:
        if self.accepted is None or not self.drafted:
            return None
        return self.accepted / self.drafted


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def spec_result(obj: Any) -> SpecResult:
    """Per-request numbers from a completion response or the final usage chunk of a stream."""
    if not isinstance(obj, dict):
        raise NotUnderstood("response is not a JSON object")
    model = obj.get("model") if isinstance(obj.get("model"), str) else None
    usage = obj.get("usage")
    completion_tokens = _number(usage.get("completion_tokens")) if isinstance(usage, dict) else None
    metrics = obj.get("metrics")
    accepted = drafted = steps = None
    ttft = tpot = None
    if isinstance(metrics, dict):
        spec = metrics.get("speculative_decoding")
        if isinstance(spec, dict):
            a, d = _number(spec.get("num_accepted_draft_tokens")), _number(spec.get("num_draft_tokens"))
            if a is not None and d is not None and a <= d:
                accepted, drafted = int(a), int(d)
            n = _number(spec.get("num_spec_steps"))
            steps = int(n) if n is not None else None
        # vLLM's per-request TTFT starts at scheduling; its Prometheus TTFT starts at arrival. Adding the
        # queue time brings the two onto the same footing.
        ttft_ms = _number(metrics.get("time_to_first_token_ms"))
        ttft = (ttft_ms + (_number(metrics.get("queue_time_ms")) or 0.0)) / 1000 if ttft_ms is not None else None
        tpot = _tpot_from_metrics(metrics, completion_tokens)
    return SpecResult(
        model=model,
        accepted=accepted,
        drafted=drafted,
        ttft_seconds=ttft,
        tpot_seconds=tpot,
        completion_tokens=int(completion_tokens) if completion_tokens is not None else None,
        steps=steps,
    )


def _tpot_from_metrics(metrics: dict[str, Any], completion_tokens: float | None) -> float | None:
    # vLLM's TPOT is decode time / (generated tokens - 1), decode time running from the first token to the last:
    # exactly its per-request mean_itl_ms (vllm/entrypoints/generate/base/serving.py, 0.33).
    itl_ms = _number(metrics.get("mean_itl_ms"))
    if itl_ms is not None:
        return itl_ms / 1000
    generation_ms = _number(metrics.get("generation_time_ms"))
    if generation_ms is None or completion_tokens is None or completion_tokens < 2:
        return None
    return generation_ms / 1000 / (completion_tokens - 1)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise NotUnderstood(f"response body is not JSON: {type(e).__name__}") from None
