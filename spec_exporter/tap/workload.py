"""Request → workload class: the `workload` label of the tap's per-band series.

A class comes from the first configured source that names one, in this order: a request header the operator names
(set by a gateway or the client), the served model alias the request asks for, the route prefix in front of the
completion endpoint; none → `default`. The label set stays closed: with a configured list of classes only those
are kept, otherwise the first `max_workloads` distinct values per process (the model_name guard); every other value
is folded into `other`, and each fold is counted (`spec_tap_workload_folded_total{reason}`).

The header may carry what a gateway knows about a tenant: its value is never logged, and only reaches a label when
it is admitted as a class.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum

DEFAULT = "default"
OTHER = "other"
MAX_WORKLOAD_CHARS = 64


class FoldReason(StrEnum):
    """Why a class value was folded into `other`: the closed set of `reason` values."""

    NOT_LISTED = "not_listed"  # not among the configured classes
    OVER_CAP = "over_cap"  # past the per-process cap of distinct classes
    INVALID = "invalid"  # too long, or not printable text


@dataclass(frozen=True, slots=True)
class WorkloadSource:
    """Where a front end looks for a request's class (from `TapSettings`)."""

    header: str | None = None
    from_model: bool = False
    from_route: bool = False

    @property
    def header_bytes(self) -> bytes | None:
        return self.header.lower().encode("latin-1") if self.header else None


# Set by a gateway that strips a route prefix before forwarding (Traefik, nginx ingress, Envoy configs).
FORWARDED_PREFIX = "x-forwarded-prefix"


def route_prefix(*prefixes: str | None) -> str | None:
    """The first segment of the first non-empty route prefix (`/code/api` → `code`).

    The front ends pass what they know of the prefix the request came in under: the ASGI `root_path` (vLLM's
    --root-path) and a gateway's X-Forwarded-Prefix. The endpoint itself is always matched without it.
    """
    for prefix in prefixes:
        segment = (prefix or "").strip("/").split("/")[0]
        if segment:
            return segment
    return None


def candidate(source: WorkloadSource, *, header: str | None, model: str | None, route: str | None) -> str | None:
    """The raw class value from the first source that names one (None: the request is `default`)."""
    if source.header and header is not None and header.strip():
        return header.strip()
    if source.from_model and isinstance(model, str) and model:
        return model
    if source.from_route and route:
        return route
    return None


def _valid(value: str) -> bool:
    return len(value) <= MAX_WORKLOAD_CHARS and value.isprintable() and value not in (DEFAULT, OTHER)


class WorkloadClasses:
    """The closed set of class label values of one process (thread-safe; the front ends share one)."""

    def __init__(self, allowed: tuple[str, ...], max_workloads: int) -> None:
        self._allowed = frozenset(allowed)
        self._max = max_workloads
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    @property
    def bound(self) -> int:
        """How many label values this set can take: its classes, `default` and `other`."""
        return (len(self._allowed) if self._allowed else self._max) + 2

    def label(self, value: str | None) -> tuple[str, FoldReason | None]:
        """The label for a raw class value, and why it was folded into `other` if it was."""
        if value is None:
            return DEFAULT, None
        if value in self._allowed:
            return value, None
        if not _valid(value):
            return OTHER, FoldReason.INVALID
        if self._allowed:
            return OTHER, FoldReason.NOT_LISTED
        with self._lock:
            if value in self._seen:
                return value, None
            if len(self._seen) < self._max:
                self._seen.add(value)
                return value, None
        return OTHER, FoldReason.OVER_CAP


__all__ = [
    "DEFAULT",
    "FORWARDED_PREFIX",
    "OTHER",
    "FoldReason",
    "WorkloadClasses",
    "WorkloadSource",
    "candidate",
    "route_prefix",
]
