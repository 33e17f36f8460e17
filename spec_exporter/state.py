"""The one immutable state the collector reads, and the store the poller publishes it through."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from spec_exporter.config import Settings
from spec_exporter.derive.baseline import Comparison
from spec_exporter.derive.health import TargetHealth
from spec_exporter.types import PollError


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
    folded_models: int = 0
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
    """Holds the latest `ExporterState`; `publish` swaps in a new one, so a scrape never sees half an update.

    It only stores: the poller derives every number it is handed, the comparisons included.
    """

    def __init__(self, targets: Mapping[str, TargetState]) -> None:
        self._state = ExporterState(MappingProxyType(dict(targets)))

    @classmethod
    def for_settings(cls, settings: Settings) -> StateStore:
        """Every configured target, not yet polled."""
        return cls({t.name: TargetState(name=t.name, role=t.role) for t in settings.targets})

    def current(self) -> ExporterState:
        return self._state

    def publish(self, target: TargetState, comparisons: tuple[Comparison, ...] = ()) -> None:
        """`target`'s new state, and the comparisons derived with it."""
        targets = dict(self._state.targets)
        targets[target.name] = target
        self._state = ExporterState(MappingProxyType(targets), comparisons)
