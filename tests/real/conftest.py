from __future__ import annotations

import pytest

from harness.models import TrainedPair
from harness.vllm import trained_models

_pair: list[TrainedPair] = []


@pytest.fixture(scope="session")
def trained() -> TrainedPair:
    """The trained target/draft pair the real tier serves: the shipped one, its checksums checked."""
    if not _pair:
        _pair.append(trained_models())
    return _pair[0]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # CI's log says which pair the real tier served.
    for pair in _pair:
        terminalreporter.write_line(f"real tier models: {pair.describe()}")
