"""The tap's voice inside vLLM: one logger under vLLM's own, and each condition said once per process.

A child of vLLM's "vllm" logger: vLLM configures that one (handler, format, VLLM_LOGGING_LEVEL) and stops it
propagating, so a logger outside it would never reach vLLM's log. Without vLLM's configuration
(VLLM_CONFIGURE_LOGGING=0) it propagates to whatever the root logger has, as any library's logger does.

Imports only the standard library.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("vllm.spec_exporter")

_said: set[tuple[str, ...]] = set()
_said_lock = threading.Lock()


def say_once(condition: tuple[str, ...], level: int, message: str, *args: Any) -> None:
    """Log `message` the first time this process meets `condition` (a request path or a setting's name at most:
    never a prompt, a header or a body): vLLM builds the middleware more than once, and a condition met per
    request would flood its log."""
    with _said_lock:
        if condition in _said:
            return
        _said.add(condition)
    log.log(level, message, *args)


__all__ = ["log", "say_once"]
