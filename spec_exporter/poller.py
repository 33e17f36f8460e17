"""The background loop: fetch each target's /metrics, parse, window, derive, publish one new state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from types import MappingProxyType

import aiohttp
import structlog

from spec_exporter.cardinality import cap_models
from spec_exporter.config import Settings, TargetConfig
from spec_exporter.derive.baseline import Comparison, compare_pairs, with_baseline
from spec_exporter.derive.health import TargetHealth, derive_target
from spec_exporter.fetch import FetchError, TargetTLS, fetch_metrics, target_tls
from spec_exporter.state import StateStore, TargetState
from spec_exporter.types import DeriveParams, PollError, Snapshot, TapSample
from spec_exporter.vllm.parse import ExpositionParser, ParseError
from spec_exporter.window import SnapshotRing, window_delta

log = structlog.get_logger("spec_exporter.poller")

TapSource = Callable[[], TapSample | None]
"""The proxy tap's counts, read with its target's scrape (the middleware's come in vLLM's own /metrics)."""


class _MultipleProcesses(Exception):
    pass


class _TargetRuntime:
    """What the poller remembers about one target between polls."""

    def __init__(
        self,
        config: TargetConfig,
        params: DeriveParams,
        keep_seconds: float,
        tap: TapSource | None,
        tls: TargetTLS | None,
    ):
        self.config = config
        self.tls = tls
        self.params = params
        self.keep_seconds = keep_seconds
        self.tap = tap
        self.parser = ExpositionParser()
        self.ring = SnapshotRing(keep_seconds)
        self.failures_in_a_row = 0
        self.models: tuple[str, ...] = ()
        self.process_starts: tuple[float, ...] = ()


_PROCESS_HISTORY = 16


def _another_process(starts: tuple[float, ...], current: float | None) -> bool:
    """A process start older than the latest, or one seen before it: the URL answers from several processes.

    A restart brings a later start than any before it; a Service in front of several pods brings the same few
    starts back in turn.
    """
    if current is None or not starts or current == starts[-1]:
        return False
    return current < starts[-1] or current in starts


def _with_proxy_tap(snapshot: Snapshot, tap: TapSample | None, url: str) -> Snapshot:
    if tap is None:
        return snapshot
    if snapshot.tap is not None:
        # Both would count the same requests; adding them up would double them.
        raise ParseError(
            PollError.DUPLICATE_SERIES,
            f"{url} already has spec_tap_* series (the tap middleware runs in that vLLM) and the proxy tap has its "
            "own: run one tap, not both",
        )
    return replace(snapshot, tap=tap)


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
        tap_sources: Mapping[str, TapSource] | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._store = store
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        keep = max(settings.windows) + 2 * settings.poll.interval
        taps = tap_sources or {}
        tls = target_tls(settings)
        self._targets = [
            _TargetRuntime(t, settings.derive_params(t), keep, taps.get(t.name), tls.get(t.name))
            for t in settings.targets
        ]
        # The one place the comparison policy is decided: which pairs are compared, and so which targets derive
        # latency by load band (both sides of every pair; the collector renders what it is given).
        self._pairs = settings.comparison_pairs()
        self._compared = {name for pair in self._pairs for name in pair}
        self._recosted = {spec for spec, _ in self._pairs}
        # Each target's params as its runtime holds them (built once: derive_params may read a cost profile).
        self._params = {rt.config.name: rt.params for rt in self._targets}
        # Each target's health as derived from its own scrapes, before any re-costing with a baseline.
        self._derived: dict[str, TargetHealth | None] = {}

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
            text = await fetch_metrics(self._session, rt.config.metrics_url, poll.timeout, poll.max_body_bytes, rt.tls)
            health, folded = self._derive(rt, text)
        except (FetchError, ParseError) as e:
            self._failed(rt, previous, e.reason, str(e), started)
            return
        except _MultipleProcesses as e:
            self._failed(rt, previous, PollError.MULTIPLE_PROCESSES, str(e), started)
            return
        except Exception as e:  # a bug of ours must not stop the loop or the other targets
            log.exception("poll crashed", target=name, error=type(e).__name__)
            self._failed(rt, previous, PollError.PARSE_ERROR, repr(e), started)
            return
        if rt.failures_in_a_row:
            log.info("poll recovered", target=name, failed_polls=rt.failures_in_a_row)
        rt.failures_in_a_row = 0
        self._publish(
            replace(
                previous,
                up=True,
                ever_succeeded=True,
                last_poll_duration_seconds=self._clock() - started,
                last_success_timestamp_seconds=self._wall_clock(),
                last_error=None,
                health=health,
                folded_models=folded,
            )
        )

    def _publish(self, target: TargetState) -> None:
        """`target`'s new state with the baseline comparisons it changes (every pair whose two sides are fresh), and
        each spec target of a pair re-costed from its own derivation with the measured speedup at its load: a
        baseline at the same load is the strongest evidence of the step cost."""
        self._derived[target.name] = target.health
        comparisons = compare_pairs(self._pairs, self._derived)
        if target.name in self._recosted:
            target = replace(target, health=self._recost(target.name, comparisons))
        others = [
            replace(current, health=self._recost(spec, comparisons))
            for spec, _ in self._pairs
            if spec != target.name and (current := self._store.current().targets[spec]).health is not None
        ]
        self._store.publish(target, comparisons, *others)

    def _recost(self, spec: str, comparisons: tuple[Comparison, ...]) -> TargetHealth | None:
        health = self._derived.get(spec)
        mine = [c for c in comparisons if c.target == spec]
        if health is None or not mine:
            return health
        return with_baseline(health, mine, self._params[spec])

    def _derive(self, rt: _TargetRuntime, text: str) -> tuple[TargetHealth, int]:
        # vLLM's body alone decides whether the target is up: the proxy tap's counts join a scrape that parsed.
        snapshot = rt.parser.parse(text, self._clock())
        if rt.tap is not None:
            snapshot = _with_proxy_tap(snapshot, rt.tap(), rt.config.metrics_url)
        snapshot, rt.models = cap_models(snapshot, rt.models, self._settings.poll.max_models)
        start = snapshot.process_start
        if _another_process(rt.process_starts, start):
            # Differencing two processes' counters gives numbers that mean nothing: start again from here.
            latest = rt.process_starts[-1]
            rt.ring.forget()
            rt.process_starts = ()
            raise _MultipleProcesses(
                f"process_start_time_seconds went from {latest} back to {start}: {rt.config.metrics_url} reaches "
                "several vLLM processes (a Service in front of a pool?); make each pod its own target"
            )
        if start is not None and (not rt.process_starts or start != rt.process_starts[-1]):
            rt.process_starts = (*rt.process_starts, start)[-_PROCESS_HISTORY:]
        point = rt.ring.push(snapshot)
        if point.restarted:
            log.info("target restarted", target=rt.config.name, engines=sorted(f"{m}/{e}" for m, e in point.restarted))
        slack = self._settings.poll.interval / 2
        deltas = {w.label: window_delta(rt.ring.points, w.seconds, slack) for w in rt.params.windows}
        load_band_latency = rt.config.name in self._compared
        health = derive_target(point, deltas, rt.params, rt.ring.points, slack, load_band_latency=load_band_latency)
        return health, snapshot.folded_models

    def _failed(
        self, rt: _TargetRuntime, previous: TargetState, reason: PollError, message: str, started: float
    ) -> None:
        rt.failures_in_a_row += 1
        # One line when a failure starts or changes its reason, not one every poll of an outage.
        if previous.last_error is not reason:
            log.warning("poll failed", target=rt.config.name, reason=reason.value, error=message[:300])
        errors = dict(previous.errors)
        errors[reason] = errors.get(reason, 0) + 1
        self._publish(
            replace(
                previous,
                up=False,
                last_poll_duration_seconds=self._clock() - started,
                errors=MappingProxyType(errors),
                last_error=reason,
                health=None,
            )
        )
