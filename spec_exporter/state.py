"""The one immutable state the collector reads, and the store the poller publishes it through."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from spec_exporter.config import Settings
from spec_exporter.derive.baseline import Comparison, compare_pairs, with_baseline
from spec_exporter.derive.health import TargetHealth
from spec_exporter.types import DeriveParams, PollError


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

    def __init__(
        self,
        targets: Mapping[str, TargetState],
        pairs: tuple[tuple[str, str], ...] = (),
        params: Mapping[str, DeriveParams] | None = None,
    ) -> None:
        self._pairs = pairs
        self._params = dict(params or {})
        # As the poller published them: a spec target's health is re-costed from these at every publish.
        self._published: dict[str, TargetState] = dict(targets)
        self._state = ExporterState(MappingProxyType(dict(targets)))

    @classmethod
    def for_settings(cls, settings: Settings) -> StateStore:
        """Every configured target, not yet polled, and the spec/baseline pairs to compare."""
        targets = {t.name: TargetState(name=t.name, role=t.role) for t in settings.targets}
        params = {t.name: settings.derive_params(t) for t in settings.targets}
        return cls(targets, settings.comparison_pairs(), params)

    def current(self) -> ExporterState:
        return self._state

    def publish(self, target: TargetState) -> None:
        self._published[target.name] = target
        targets = dict(self._published)
        health = {name: t.health for name, t in targets.items()}
        comparisons = compare_pairs(self._pairs, health)
        # A baseline measured at the load the target runs at is the strongest evidence of its step cost.
        for spec_name, _ in self._pairs:
            spec, params = targets[spec_name], self._params.get(spec_name)
            mine = [c for c in comparisons if c.target == spec_name]
            if spec.health is not None and params is not None and mine:
                targets[spec_name] = replace(spec, health=with_baseline(spec.health, mine, params))
        self._state = ExporterState(MappingProxyType(targets), comparisons)
