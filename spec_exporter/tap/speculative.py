"""What decides acceptance besides temperature: the engine's speculative method and how it verifies drafts.

vLLM puts none of it in a metric or a public endpoint (0.32: no method/k label on its spec-decode series;
/server_info only with VLLM_SERVER_DEV_MODE). Inside its API server the middleware reads it where vLLM keeps it,
`app.state.vllm_config.speculative_config` (vllm/config/speculative.py: method, num_speculative_tokens, the draft
model, draft_sample_method greedy|probabilistic, rejection_sample_method standard|synthetic|block); the proxy tap
takes the same fields from its configuration. Read once, exported as the labels of one info series.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The info series' labels, in order; a field the engine does not have is "".
LABELS = ("method", "num_speculative_tokens", "draft_model", "draft_sample_method", "rejection_sample_method")
INVALID = "invalid"
_MAX_CHARS = 200


def _value(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        # An enum or a path-like: its string, if it is a short printable one.
        raw = getattr(raw, "value", raw)
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            return INVALID
    text = str(raw)
    return text if len(text) <= _MAX_CHARS and text.isprintable() else INVALID


def info_labels(fields: Mapping[str, Any]) -> dict[str, str] | None:
    """The info series' labels from configured fields (None without a method: no series)."""
    if not fields.get("method"):
        return None
    return {name: _value(fields.get(name)) for name in LABELS}


def from_vllm_config(vllm_config: Any) -> dict[str, str] | None:
    """The labels from vLLM's VllmConfig (None when it runs without speculative decoding). Reads attributes only;
    the draft model sits on `draft_model_config.model` (0.32) or `model` of the speculative config."""
    spec = getattr(vllm_config, "speculative_config", None)
    if spec is None:
        return None
    draft = getattr(getattr(spec, "draft_model_config", None), "model", None) or getattr(spec, "model", None)
    fields = {name: getattr(spec, name, None) for name in LABELS if name != "draft_model"}
    return info_labels({**fields, "draft_model": draft})


def from_asgi_scope(scope: Mapping[str, Any]) -> dict[str, str] | None:
    """The labels from the app Starlette puts in every request's scope (vLLM's FastAPI app)."""
    state = getattr(scope.get("app"), "state", None)
    return from_vllm_config(getattr(state, "vllm_config", None))


__all__ = ["LABELS", "from_asgi_scope", "from_vllm_config", "info_labels"]
