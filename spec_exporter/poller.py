"""The background loop: fetch each target's /metrics, parse, window, derive, publish one new state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from types import MappingProxyType

import aiohttp
import structlog

from spec_exporter.config import Settings, TargetConfig, format_duration
from spec_exporter.derive.baseline import Comparison, compare
from spec_exporter.derive.health import DeriveParams, TargetHealth, Window, derive_target
from spec_exporter.derive.verdict import Thresholds
from spec_exporter.fetch import FetchError, fetch_metrics
from spec_exporter.state import PollError, StateStore, TargetState
from spec_exporter.vllm.parse import ExpositionParser, ParseError
from spec_exporter.window import SnapshotRing, window_delta

log = structlog.get_logger("spec_exporter.poller")


def derive_params(settings: Settings, target: TargetConfig) -> DeriveParams:
    return DeriveParams(
        windows=tuple(Window(format_duration(w), w) for w in sorted(settings.windows)),
        verdict_window=format_duration(settings.verdict_window_seconds),
        thresholds=Thresholds(
            disable_below=settings.thresholds.disable_below,
            beneficial_at=settings.thresholds.beneficial_at,
            min_draft_tokens=settings.thresholds.min_draft_tokens,
        ),
        num_speculative_tokens=target.num_speculative_tokens or settings.speculation.num_speculative_tokens,
        draft_cost_ratio=(
            target.draft_cost_ratio if target.draft_cost_ratio is not None else settings.speculation.draft_cost_ratio
        ),
    )


def comparisons_for(settings: Settings) -> Callable[[Mapping[str, TargetState]], tuple[Comparison, ...]]:
    pairs = [(t.name, b.name) for t in settings.targets if (b := settings.baseline_for(t)) is not None]

    def comparisons(targets: Mapping[str, TargetState]) -> tuple[Comparison, ...]:
        out: list[Comparison] = []
        for spec_name, baseline_name in pairs:
            spec, baseline = targets[spec_name].health, targets[baseline_name].health
            if spec is not None and baseline is not None:
                out.extend(compare(spec_name, spec, baseline_name, baseline))
        return tuple(out)

    return comparisons


def new_store(settings: Settings) -> StateStore:
    return StateStore(
        {t.name: TargetState(name=t.name, role=t.role) for t in settings.targets}, comparisons_for(settings)
    )


class _TargetRuntime:
    """What the poller remembers about one target between polls."""

    def __init__(self, config: TargetConfig, params: DeriveParams, keep_seconds: float) -> None:
        self.config = config
        self.params = params
        self.parser = ExpositionParser()
        self.ring = SnapshotRing(keep_seconds)
        self.failures_in_a_row = 0


class Poller:
    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        store: StateStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._session = session
        self._store = store
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        keep = max(settings.windows) + 2 * settings.poll.interval
        self._targets = [_TargetRuntime(t, derive_params(settings, t), keep) for t in settings.targets]

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(t) for t in self._targets))

    async def run(self) -> None:
        """Poll every target each interval until cancelled."""
        interval = self._settings.poll.interval
        while True:
            started = self._clock()
            await self.poll_once()
            await self._sleep(max(0.0, interval - (self._clock() - started)))

    async def _poll(self, rt: _TargetRuntime) -> None:
        poll = self._settings.poll
        name = rt.config.name
        started = self._clock()
        previous = self._store.current().targets[name]
        try:
            text = await fetch_metrics(self._session, rt.config.metrics_url, poll.timeout, poll.max_body_bytes)
            taken_at = self._clock()
            snapshot = rt.parser.parse(text, taken_at)
            point = rt.ring.push(snapshot)
            slack = poll.interval / 2
            deltas = {w.label: window_delta(rt.ring.points, w.seconds, slack) for w in rt.params.windows}
            health: TargetHealth = derive_target(point, deltas, rt.params)
        except (FetchError, ParseError) as e:
            self._failed(rt, previous, PollError(e.reason), str(e), started)
            return
        except Exception as e:  # a bug of ours must not stop the loop or the other targets
            log.exception("poll crashed", target=name, error=type(e).__name__)
            self._failed(rt, previous, PollError.PARSE_ERROR, repr(e), started)
            return
        if rt.failures_in_a_row:
            log.info("poll recovered", target=name, failed_polls=rt.failures_in_a_row)
        rt.failures_in_a_row = 0
        if point.restarted:
            log.info("target restarted", target=name, engines=sorted(f"{m}/{e}" for m, e in point.restarted))
        self._store.publish(
            replace(
                previous,
                up=True,
                ever_succeeded=True,
                last_poll_duration_seconds=self._clock() - started,
                last_success_timestamp_seconds=self._wall_clock(),
                last_error=None,
                health=health,
            )
        )

    def _failed(
        self, rt: _TargetRuntime, previous: TargetState, reason: PollError, message: str, started: float
    ) -> None:
        rt.failures_in_a_row += 1
        # One line when a failure starts or changes its reason, not one every poll of an outage.
        if previous.last_error is not reason:
            log.warning("poll failed", target=rt.config.name, reason=reason.value, error=message[:300])
        errors = dict(previous.errors)
        errors[reason] = errors.get(reason, 0) + 1
        self._store.publish(
            replace(
                previous,
                up=False,
                last_poll_duration_seconds=self._clock() - started,
                errors=MappingProxyType(errors),
                last_error=reason,
                health=None,
            )
        )
