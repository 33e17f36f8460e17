"""The one immutable state the collector reads, and the store the poller publishes it through."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from spec_exporter.config import Settings
from spec_exporter.derive.baseline import Comparison, compare_pairs
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
    """Holds the latest `ExporterState`; `publish` swaps in a new one, so a scrape never sees half an update."""

    def __init__(self, targets: Mapping[str, TargetState], pairs: tuple[tuple[str, str], ...] = ()) -> None:
        self._pairs = pairs
        self._state = ExporterState(MappingProxyType(dict(targets)))

    @classmethod
    def for_settings(cls, settings: Settings) -> StateStore:
        """Every configured target, not yet polled, and the spec/baseline pairs to compare."""
        targets = {t.name: TargetState(name=t.name, role=t.role) for t in settings.targets}
        return cls(targets, settings.comparison_pairs())

    def current(self) -> ExporterState:
        return self._state

    def publish(self, target: TargetState) -> None:
        targets = dict(self._state.targets)
        targets[target.name] = target
        health = {name: t.health for name, t in targets.items()}
        self._state = ExporterState(MappingProxyType(targets), compare_pairs(self._pairs, health))
