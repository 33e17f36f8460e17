"""The one immutable state the collector reads, and the store the poller publishes it through."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from spec_exporter.derive.baseline import Comparison
from spec_exporter.derive.health import TargetHealth


class PollError(StrEnum):
    """Why a poll failed: the closed set of `reason` label values."""

    TIMEOUT = "timeout"
    CONNECTION = "connection_error"
    HTTP_STATUS = "http_status"
    BODY_TOO_LARGE = "body_too_large"
    TRUNCATED = "truncated"
    PARSE_ERROR = "parse_error"
    UNKNOWN_LAYOUT = "unknown_layout"


@dataclass(frozen=True, slots=True)
class TargetState:
    name: str
    role: str
    up: bool = False
    ever_succeeded: bool = False
    last_poll_duration_seconds: float | None = None
    last_success_timestamp_seconds: float | None = None
    errors: Mapping[PollError, int] = field(default_factory=lambda: MappingProxyType({e: 0 for e in PollError}))
    last_error: PollError | None = None
    # None while the target is down: derived numbers are not exported from stale data.
    health: TargetHealth | None = None


@dataclass(frozen=True, slots=True)
class ExporterState:
    targets: Mapping[str, TargetState]
    comparisons: tuple[Comparison, ...] = ()

    @property
    def ready(self) -> bool:
        return all(t.ever_succeeded for t in self.targets.values())


class StateStore:
    """Holds the latest `ExporterState`; `publish` swaps in a new one, so a scrape never sees half an update."""

    def __init__(
        self,
        targets: Mapping[str, TargetState],
        comparisons: Callable[[Mapping[str, TargetState]], tuple[Comparison, ...]] = lambda _: (),
    ) -> None:
        self._comparisons = comparisons
        self._state = ExporterState(MappingProxyType(dict(targets)))

    def current(self) -> ExporterState:
        return self._state

    def publish(self, target: TargetState) -> None:
        targets = dict(self._state.targets)
        targets[target.name] = target
        self._state = ExporterState(MappingProxyType(targets), self._comparisons(targets))
