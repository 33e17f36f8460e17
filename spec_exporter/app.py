"""The aiohttp application: routes, the shared client session, the poller task, and the proxy tap beside it.

Nothing here may hold up serving: /readyz answers 200 as soon as the exporter (and the tap, when it is in the
request path) listens, whatever the targets do; their health is in the metrics and in /readyz's body.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from spec_exporter import __version__
from spec_exporter.collector import SpecDecodeCollector
from spec_exporter.config import Settings
from spec_exporter.poller import Poller, TapSource
from spec_exporter.state import ExporterState, StateStore
from spec_exporter.tap.metrics import REMEDY
from spec_exporter.vllm.parse import read_tap_samples

SETTINGS_KEY = web.AppKey("settings", Settings)
STORE_KEY = web.AppKey("store", StateStore)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
POLLER_KEY = web.AppKey("poller", Poller)

_LANDING = """<!doctype html>
<html><head><title>spec_exporter</title></head><body>
<h1>spec_exporter {version}</h1>
<p>Speculative-decoding health for vLLM.</p>
<ul><li><a href="{metrics}">Metrics</a></li><li><a href="/healthz">Health</a></li>
<li><a href="/readyz">Readiness</a></li></ul>
</body></html>
"""

PollerFactory = Callable[[Settings, aiohttp.ClientSession, StateStore], Poller]


def build_registry(store: StateStore, *, process_metrics: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpecDecodeCollector(store.current))
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


class ExpositionCache:
    """One rendering per exporter state and format, shared by every scrape until the next poll publishes.

    Rendering runs in a worker thread, so fifty scrapers cost one rendering per poll, not fifty renderings on the
    event loop that relays the tap's token streams. Process metrics are as fresh as the last poll.
    """

    def __init__(self, registry: CollectorRegistry, state: Callable[[], ExporterState]) -> None:
        self._registry = registry
        self._state = state
        self._cache: dict[str, tuple[ExporterState, asyncio.Future[bytes]]] = {}
        self._gzip: dict[str, tuple[bytes, bytes]] = {}

    async def render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        state = self._state()
        cached = self._cache.get(content_type)
        if cached is None or cached[0] is not state:
            future = asyncio.get_running_loop().run_in_executor(None, encoder, self._registry)
            cached = self._cache[content_type] = (state, future)
        return await asyncio.shield(cached[1]), content_type

    async def gzipped(self, accept: str) -> tuple[bytes, str]:
        body, content_type = await self.render(accept)
        # Keyed on the very body it compressed: a poll that lands while this scrape waited must not pair the new
        # state's entry with the old state's bytes.
        packed = self._gzip.get(content_type)
        if packed is None or packed[0] is not body:
            packed = self._gzip[content_type] = (body, gzip.compress(body, 6))
        return packed[1], content_type


def _readiness(state: ExporterState, tap_warning: bool) -> str:
    lines = ["ready"]
    for name, t in sorted(state.targets.items()):
        if t.up:
            lines.append(f"target {name!r}: up")
        elif t.ever_succeeded:
            lines.append(f"target {name!r}: down ({t.last_error.value if t.last_error else 'unknown'})")
        else:
            reason = f", last error {t.last_error.value}" if t.last_error else ""
            lines.append(f"target {name!r}: not polled successfully yet{reason}")
    if tap_warning:
        # Not a reason to take anything out of service, but the one place an operator looks first.
        lines.append(
            "warning: vLLM answers without per-request speculative-decoding metrics, so acceptance by "
            f"temperature cannot be measured; start vLLM with {REMEDY}"
        )
    return "\n".join(lines) + "\n"


def create_app(
    settings: Settings,
    *,
    session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
    telemetry_path: str = "/metrics",
    poller_factory: PollerFactory | None = None,
    run_poller: bool = True,
    tap_sources: dict[str, TapSource] | None = None,
    middlewares: Iterable[Any] = (),
) -> web.Application:
    """The exporter as an aiohttp app; the poller runs from startup to cleanup unless `run_poller` is off."""
    app = web.Application(middlewares=list(middlewares))
    store = StateStore.for_settings(settings)
    app[SETTINGS_KEY] = settings
    app[STORE_KEY] = store
    exposition = ExpositionCache(build_registry(store), store.current)

    def default_poller(settings: Settings, session: aiohttp.ClientSession, store: StateStore) -> Poller:
        return Poller(settings, session, store, tap_sources=tap_sources)

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        async with session_factory() as session:
            app[SESSION_KEY] = session
            app[POLLER_KEY] = (poller_factory or default_poller)(settings, session, store)
            yield

    async def poller_task(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(app[POLLER_KEY].run()) if run_poller else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.extend([client_session, poller_task])

    async def landing(_: web.Request) -> web.Response:
        return web.Response(text=_LANDING.format(version=__version__, metrics=telemetry_path), content_type="text/html")

    async def healthz(_: web.Request) -> web.Response:
        # Alive as long as the event loop answers; a dead vLLM is reported in metrics, not by restarting us.
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        state = store.current()
        warning = any(
            t.health is not None and t.health.tap and t.health.tap.missing_spec_metrics for t in state.targets.values()
        )
        return web.Response(text=_readiness(state, bool(warning)))

    async def metrics(request: web.Request) -> web.Response:
        accept = ",".join(request.headers.getall("Accept", []))
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body, content_type = await exposition.gzipped(accept)
            return web.Response(body=body, headers={"Content-Type": content_type, "Content-Encoding": "gzip"})
        body, content_type = await exposition.render(accept)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/", landing)
    app.router.add_get(telemetry_path, metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def listen_address(address: str) -> tuple[str, int]:
    """`[host]:port` → (host, port); an empty host means every IPv4 interface, as in Prometheus exporters."""
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def tap_source(registry: CollectorRegistry) -> TapSource:
    """The proxy tap's families, read by the poller with its target's scrape: as data, never as text added to
    vLLM's body (a body that is not vLLM's metrics must fail the poll whatever the tap holds)."""
    return lambda: read_tap_samples((s.name, s.labels, s.value) for m in registry.collect() for s in m.samples)


async def serve(
    settings: Settings,
    *,
    listen: str,
    telemetry_path: str = "/metrics",
    tap_listen: str | None = None,
    stop: asyncio.Event,
    ssl_context: ssl.SSLContext | None = None,
    middlewares: Iterable[Any] = (),
) -> None:
    """Run the exporter (and the proxy tap, if it has an address) until `stop` is set.

    The proxy tap folds into the `spec_tap_*` families of a private registry, which the poller reads with its
    target's scrape into the same fields as the middleware's families on vLLM's own /metrics.
    """
    runners: list[tuple[web.AppRunner, str, ssl.SSLContext | None]] = []
    taps: dict[str, TapSource] = {}
    if tap_listen:
        from spec_exporter.tap.metrics import TapMetrics
        from spec_exporter.tap.proxy import create_tap_app, tap_runner
        from spec_exporter.tap.speculative import info_labels

        tap_cfg = settings.tap
        tap_registry = CollectorRegistry(auto_describe=False)
        tap_metrics = TapMetrics(tap_registry, max_models=tap_cfg.max_models, workloads=tap_cfg.workload_classes())
        # The proxy cannot see vLLM's config: the method and verification come from the configuration.
        tap_metrics.speculative_config(info_labels(settings.speculation.model_dump()))
        tap_app = create_tap_app(
            str(tap_cfg.upstream_url or settings.tap_target.url), tap_metrics, tap_cfg, clock=time.monotonic
        )
        taps[settings.tap_target.name] = tap_source(tap_registry)
        runners.append((tap_runner(tap_app), tap_listen, None))
    app = create_app(settings, telemetry_path=telemetry_path, tap_sources=taps, middlewares=middlewares)
    # The exporter starts last: once /readyz answers, the tap in the request path is already listening.
    runners.append((web.AppRunner(app, access_log=None), listen, ssl_context))
    try:
        for runner, address, context in runners:
            await runner.setup()
            host, port = listen_address(address)
            await web.TCPSite(runner, host, port, ssl_context=context).start()
        await stop.wait()
    finally:
        for runner, _, _ in reversed(runners):
            await runner.cleanup()
