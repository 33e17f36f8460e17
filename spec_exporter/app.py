"""The aiohttp application: routes, the shared client session and the poller task."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler

from spec_exporter import __version__
from spec_exporter.collector import SpecDecodeCollector
from spec_exporter.config import Settings
from spec_exporter.poller import Poller, new_store
from spec_exporter.state import StateStore
from spec_exporter.tap.recorder import REMEDY, TapRecorder

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


def build_registry(
    store: StateStore, *, tap: TapRecorder | None = None, process_metrics: bool = True
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpecDecodeCollector(store.current, tap.snapshot if tap is not None else None))
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def create_app(
    settings: Settings,
    *,
    session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
    telemetry_path: str = "/metrics",
    poller_factory: Callable[[Settings, aiohttp.ClientSession, StateStore], Poller] = Poller,
    run_poller: bool = True,
    tap: TapRecorder | None = None,
) -> web.Application:
    """The exporter as an aiohttp app; the poller runs from startup to cleanup unless `run_poller` is off."""
    app = web.Application()
    store = new_store(settings)
    app[SETTINGS_KEY] = settings
    app[STORE_KEY] = store
    registry = build_registry(store, tap=tap)

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        async with session_factory() as session:
            app[SESSION_KEY] = session
            app[POLLER_KEY] = poller_factory(settings, session, store)
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
        waiting = sorted(name for name, t in state.targets.items() if not t.ever_succeeded)
        lines = [f"target {name!r} has not been polled successfully yet" for name in waiting]
        if tap is not None and tap.missing_spec_metrics:
            # Not a reason to take the exporter out of service, but the one place an operator looks first.
            lines.append(
                f"warning: vLLM answers without per-request speculative-decoding metrics, so the tap "
                f"cannot measure acceptance by temperature; start vLLM with {REMEDY}"
            )
        body = ("ready" if not waiting else "not ready") + "\n" + "".join(line + "\n" for line in lines)
        return web.Response(status=503 if waiting else 200, text=body)

    app.router.add_get("/", landing)
    app.router.add_get(telemetry_path, make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def listen_address(address: str) -> tuple[str, int]:
    """`[host]:port` → (host, port); an empty host means every IPv4 interface, as in Prometheus exporters."""
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(
    settings: Settings,
    *,
    listen: str,
    telemetry_path: str = "/metrics",
    tap_listen: str | None = None,
    stop: asyncio.Event,
) -> None:
    """Run the exporter (and the proxy tap, if it has an address) until `stop` is set.

    The proxy tap folds into the `spec_tap_*` families of a private registry, attached to the exporter app as
    `app[TAP_REGISTRY_KEY]` for the poller to read like vLLM's own /metrics.
    """
    from spec_exporter.join.bands import Bands
    from spec_exporter.join.exchange import JoinSettings
    from spec_exporter.join.metrics import TapMetrics
    from spec_exporter.tap.proxy import TAP_REGISTRY_KEY, create_tap_app, tap_runner

    tap_registry = None
    runners = []
    if tap_listen:
        tap_cfg = settings.tap
        tap_registry = CollectorRegistry()
        tap_app = create_tap_app(
            str(tap_cfg.upstream_url or settings.tap_target.url),
            TapMetrics(tap_registry, max_models=tap_cfg.max_models),
            JoinSettings(
                Bands(tuple(tap_cfg.temperature_bands), tap_cfg.default_temperature),
                inject_usage=tap_cfg.inject_usage,
                max_inspect_bytes=tap_cfg.max_inspect_bytes,
            ),
            clock=time.monotonic,
        )
        tap_app[TAP_REGISTRY_KEY] = tap_registry
        runners.append((tap_runner(tap_app), tap_listen))
    app = create_app(settings, telemetry_path=telemetry_path)
    if tap_registry is not None:
        app[TAP_REGISTRY_KEY] = tap_registry
    runners.insert(0, (web.AppRunner(app, access_log=None), listen))
    try:
        for runner, address in runners:
            await runner.setup()
            host, port = listen_address(address)
            await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        for runner, _ in reversed(runners):
            await runner.cleanup()
