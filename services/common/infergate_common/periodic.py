"""The loop behind every background chore that talks to another service
(a registry heartbeat, a registry sweep, a load report): one step per
interval until stopped; a failure is logged once when it starts and once
when it ends, never once per interval, and never stops the loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


def run_every(
    interval_s: float,
    stopped: threading.Event,
    step: Callable[[], None],
    failures: tuple[type[BaseException], ...],
    log: logging.Logger,
    failing_message: str,
    recovered_message: str,
    *,
    step_first: bool = False,
) -> None:
    """Call ``step`` every ``interval_s`` (first at once with
    ``step_first``) until ``stopped`` is set. ``failing_message`` (with a
    ``%s`` for the error) is logged when ``step`` starts raising one of
    ``failures``; ``recovered_message`` when it succeeds again."""
    failing = False
    if not step_first and stopped.wait(interval_s):
        return
    while True:
        try:
            step()
            if failing:
                log.info(recovered_message)
            failing = False
        except failures as exc:
            if not failing:
                log.warning(failing_message, exc)
            failing = True
        if stopped.wait(interval_s):
            return
