import logging
import threading

import pytest

from infergate_common.periodic import run_every


def test_a_failure_is_logged_when_it_starts_and_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    stopped = threading.Event()
    outcomes = [OSError("down"), OSError("still down"), None, OSError("down again"), None]
    calls = []

    def step() -> None:
        calls.append(len(calls))
        outcome = outcomes[len(calls) - 1]
        if len(calls) == len(outcomes):
            stopped.set()
        if outcome is not None:
            raise outcome

    log = logging.getLogger("periodic-test")
    with caplog.at_level(logging.INFO, logger="periodic-test"):
        run_every(0.001, stopped, step, (OSError,), log, "failing: %s", "back", step_first=True)
    assert len(calls) == len(outcomes)
    assert [r.getMessage() for r in caplog.records] == [
        "failing: down",
        "back",
        "failing: down again",
        "back",
    ]


def test_other_errors_are_not_swallowed() -> None:
    def step() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_every(
            0.001, threading.Event(), step, (OSError,), logging.getLogger("x"), "%s", "", step_first=True
        )


def test_without_step_first_a_stop_during_the_first_wait_runs_nothing() -> None:
    stopped = threading.Event()
    stopped.set()
    calls = []
    run_every(10, stopped, lambda: calls.append(1), (OSError,), logging.getLogger("x"), "%s", "")
    assert calls == []
