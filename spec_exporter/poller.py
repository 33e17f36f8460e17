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
from spec_exporter.derive.health import TargetHealth, derive_target
from spec_exporter.fetch import FetchError, TargetTLS, fetch_metrics, target_tls
from spec_exporter.state import StateStore, TargetState
from spec_exporter.types import DeriveParams, PollError
from spec_exporter.vllm.parse import ExpositionParser, ParseError
from spec_exporter.window import SnapshotRing, window_delta

log = structlog.get_logger("spec_exporter.poller")

TextSource = Callable[[], str]
"""Extra exposition text read with a target's scrape: the proxy tap's own `spec_tap_*` families."""


class _MultipleProcesses(Exception):
    pass


class _TargetRuntime:
    """What the poller remembers about one target between polls."""

    def __init__(
        self,
        config: TargetConfig,
        params: DeriveParams,
        keep_seconds: float,
        extra: TextSource | None,
        tls: TargetTLS | None,
    ):
        self.config = config
        self.tls = tls
        self.params = params
        self.keep_seconds = keep_seconds
        self.extra = extra
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
        extra_text: Mapping[str, TextSource] | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._store = store
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        keep = max(settings.windows) + 2 * settings.poll.interval
        extra = extra_text or {}
        tls = target_tls(settings)
        self._targets = [
            _TargetRuntime(t, settings.derive_params(t), keep, extra.get(t.name), tls.get(t.name))
            for t in settings.targets
        ]
        # Latency by load band is read only where a baseline comparison uses it: on both sides of every pair.
        self._compared = {name for pair in settings.comparison_pairs() for name in pair}

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
            if rt.extra is not None:
                text = text + rt.extra()
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
        self._store.publish(
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

    def _derive(self, rt: _TargetRuntime, text: str) -> tuple[TargetHealth, int]:
        snapshot = rt.parser.parse(text, self._clock())
        snapshot, rt.models = cap_models(snapshot, rt.models, self._settings.poll.max_models)
        start = snapshot.process_start
        if _another_process(rt.process_starts, start):
            # Differencing two processes' counters gives numbers that mean nothing: start again from here.
            latest = rt.process_starts[-1]
            rt.ring = SnapshotRing(rt.keep_seconds)
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
        band_latency = rt.config.name in self._compared
        health = derive_target(point, deltas, rt.params, rt.ring.points, slack, band_latency=band_latency)
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
