"""The real Prometheus scraping the real exporter app over TLS with basic auth: the web configuration as a scraper meets
it.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.unit.test_webconfig import (
    HASH,
    PASSWORD,
    PKI,
    tls_section,
    web_config,
)


def test_prometheus_scrapes_the_exporter_over_tls_only_with_the_right_password(pki: PKI, tmp_path: Path) -> None:
    from harness.ports import free_port
    from harness.prometheus import ScrapeJob, prometheus_stack
    from harness.wait import until
    from spec_exporter.app import create_app
    from spec_exporter.config import settings_from_mapping

    config = web_config(tmp_path, tls_section(pki) + f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    middleware = config.middleware()
    assert middleware is not None
    settings = settings_from_mapping({"targets": [{"name": "vllm", "url": f"http://127.0.0.1:{free_port()}"}]})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, int]:
        app = create_app(settings, run_poller=False)
        app.middlewares.append(middleware)  # what app.py's create_app(..., middlewares=...) will do
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=config.ssl_context()).start()
        return runner, runner.addresses[0][1]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    tls = {"ca_file": str(pki.path("ca.crt"))}
    jobs = {
        "right": {"scheme": "https", "tls_config": tls, "basic_auth": {"username": "prometheus", "password": PASSWORD}},
        "wrong": {"scheme": "https", "tls_config": tls, "basic_auth": {"username": "prometheus", "password": "nope"}},
        "anonymous": {"scheme": "https", "tls_config": tls},
        "plain": {"scheme": "http", "basic_auth": {"username": "prometheus", "password": PASSWORD}},
    }
    scrape = [ScrapeJob(job, [f"127.0.0.1:{port}"], settings=settings_) for job, settings_ in jobs.items()]
    try:
        with prometheus_stack(tmp_path / "prometheus", rules={}, jobs=scrape) as prom:

            def scraped_every_job() -> dict[str, dict[str, Any]] | None:
                targets = prom.targets()
                every = len(targets) == len(jobs) and all(t["health"] != "unknown" for t in targets.values())
                return targets if every else None

            # Scrapes every second: a minute bounds a failure on a busy machine.
            targets = until(scraped_every_job, 60, "Prometheus to scrape every job once", prom.targets)
            up = {r["metric"]["job"]: r["value"][1] for r in prom.query("up")}
            build_info = prom.query("spec_decode_exporter_build_info")
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert up == {"right": "1", "wrong": "0", "anonymous": "0", "plain": "0"}, {
        j: t["lastError"] for j, t in targets.items()
    }
    assert "401" in targets["wrong"]["lastError"] and "401" in targets["anonymous"]["lastError"]
    assert [r["metric"]["job"] for r in build_info] == ["right"]
