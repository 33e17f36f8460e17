"""The aiohttp application: routes, the shared client session and the poller task."""

from __future__ import annotations

import asyncio
import contextlib
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


def build_registry(store: StateStore, *, process_metrics: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpecDecodeCollector(store.current))
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
) -> web.Application:
    """The exporter as an aiohttp app; the poller runs from startup to cleanup unless `run_poller` is off."""
    app = web.Application()
    store = new_store(settings)
    app[SETTINGS_KEY] = settings
    app[STORE_KEY] = store
    registry = build_registry(store)

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
        if not waiting:
            return web.Response(text="ready\n")
        lines = [f"target {name!r} has not been polled successfully yet" for name in waiting]
        return web.Response(status=503, text="not ready\n" + "\n".join(lines) + "\n")

    app.router.add_get("/", landing)
    app.router.add_get(telemetry_path, make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
