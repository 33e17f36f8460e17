"""harness.wait.until: the first truthy value of the condition, or a failure that says what was last seen."""

from __future__ import annotations

import pytest

from harness.wait import until


def test_returns_the_conditions_first_truthy_value() -> None:
    answers = iter([0, None, [], "ready", "later"])
    assert until(lambda: next(answers), 60, "readiness", interval=0) == "ready"


def test_a_timeout_names_what_it_waited_for_and_what_it_last_saw() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the band alert; last seen: band 0\.71"):
        until(lambda: False, 0, "the band alert", lambda: "band 0.71", interval=0)


def test_a_failing_reader_of_what_was_seen_does_not_hide_the_timeout() -> None:
    def broken() -> str:
        raise OSError("connection refused")

    with pytest.raises(AssertionError, match=r"the band alert; last seen: \(could not read: OSError"):
        until(lambda: False, 0, "the band alert", broken, interval=0)
