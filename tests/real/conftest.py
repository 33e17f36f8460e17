from __future__ import annotations

import pytest

from harness.models import TrainedPair
from harness.vllm import trained_models

_pair: list[TrainedPair] = []


@pytest.fixture(scope="session")
def trained() -> TrainedPair:
    """The trained target/draft pair the real tier serves; a fresh machine trains it here, once."""
    if not _pair:
        _pair.append(trained_models())
    return _pair[0]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # CI's log says what the real tier served and what training it cost on this machine.
    for pair in _pair:
        when = f"trained in this run in {pair.trained_now:.0f} s" if pair.trained_now is not None else "from the cache"
        terminalreporter.write_line(f"real tier models ({when}): {pair.describe()}; {pair.target.parent}")
