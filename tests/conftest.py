from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import structlog

from spec_exporter.config import Settings, settings_from_mapping
from spec_exporter.poller import Poller
from spec_exporter.state import StateStore
from tests.standin import StandIn
from tests.tlskit import PKI, make_pki

TESTS = Path(__file__).parent
# A test's tier is its directory: tests/unit (no vLLM, no Prometheus binaries), tests/system (Prometheus,
# Alertmanager, promtool, chromium), tests/real (a real vLLM). `make unit`, `make system` and `make real` run one
# each; `-m` selects by the same names.
TIERS = ("unit", "system", "real")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        top = item.path.relative_to(TESTS).parts[0]
        item.add_marker(top if top in TIERS else "unit")


class FakeClock:
    """A clock that moves only when told to; `sleep` advances it instead of waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    # The CLI configures structlog globally; don't let one test's setup leak into the next.
    yield
    structlog.reset_defaults()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall_clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest_asyncio.fixture
async def standin(aiohttp_server: Any) -> AsyncIterator[tuple[StandIn, str]]:
    s = StandIn()
    server = await aiohttp_server(s.app())
    yield s, str(server.make_url("")).rstrip("/")
    s.released.set()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_settings(url: str, **overrides: Any) -> Settings:
    data: dict[str, Any] = {"targets": [{"name": "vllm", "url": url}], "poll": {"interval": "5s", "timeout": "1s"}}
    data.update(overrides)
    return settings_from_mapping(data)


@pytest.fixture
def make_poller(
    session: aiohttp.ClientSession, clock: FakeClock, wall_clock: FakeClock
) -> Callable[[Settings], tuple[Poller, StateStore]]:
    def make(settings: Settings) -> tuple[Poller, StateStore]:
        store = StateStore.for_settings(settings)
        return Poller(settings, session, store, clock=clock, wall_clock=wall_clock, sleep=clock.sleep), store

    return make
