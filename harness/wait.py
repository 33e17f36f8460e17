"""Waiting on an event with a bound: poll a condition until it holds, and when the budget runs out say what was
last seen, not just that time ran out. The budgets are generous because they only bound a failure: a pass ends as
soon as the event happens, however busy the machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["until"]

T = TypeVar("T")


def until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    seen: Callable[[], Any] | None = None,
    interval: float = 0.2,
) -> T:
    """`condition()`'s first truthy value, polled every `interval` seconds for up to `timeout` seconds.

    On timeout, raises AssertionError naming `what` and, with `seen`, what it returned at the end (e.g. the rates,
    bands and alert states the condition reads)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            last = f"; last seen: {_describe(seen)}" if seen is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{last}")
        time.sleep(interval)


def _describe(seen: Callable[[], Any]) -> str:
    try:
        return str(seen())
    except Exception as e:  # what was seen must not hide the timeout behind another error
        return f"(could not read: {e!r})"
