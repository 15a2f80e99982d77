"""Poll instead of sleeping while a process's only call to a worker is out,
when that kind of call is usually answered within a short window.

A router process with nothing else to do sleeps in ``epoll_wait`` until the
worker answers, and waking a process that sat idle costs the virtual
machines measured here about a quarter of a millisecond of CPU and of
latency (``docs/performance.md``, tenth and eleventh rounds). A
classifier, a short completion or a stream's start is often answered
sooner than that wake-up takes.

So while the process has exactly one request in flight and one call to a
worker out, the loop keeps polling its sockets without blocking (a libev
idle watcher: the loop calls ``epoll_wait`` with a zero timeout while one is
active), then sleeps as before. Every other greenlet is served as usual
meanwhile: the loop runs, it only does not block. Every 16th poll offers
the core to any other process waiting for it (``sched_yield``), so a worker
on the same core answers as soon as it would have. The poll lasts twice the
usual answer time of that kind of call to that replica (a moving average),
at most ``window_us``. A kind usually slower than ``window_us`` (a long
generation) is never polled for, as an adaptive mutex stops spinning for a
lock that is held long. A process with another request in flight (an open
stream, another call) is busy and never polls. Nor does a process where
fewer than 9 in 10 of the recent calls (a moving average over about 16)
began lone: under load a process finds itself with one call out now and
then, and there the core is better left to the others.

The same poll bridges the gap between one request's response and the next
request, when this process's recent gaps were usually shorter than
``window_us`` (a client sending requests one after another on its
connection: a batch script, an agent's calls, a benchmark): the process
would otherwise sleep and be woken for the next request line. The gap's
usual length is a moving average of the gaps, each counted at most
``LONG_GAP_WINDOWS`` windows, so a process whose traffic comes with pauses
learns within a few requests not to poll. Nor does it poll after a request
whose call to a worker took longer than the window (an encoder's forward
pass): a wake-up is a small part of such a request, and where the worker
shares the router's cores the poll's CPU is better left to it. Side by side
on one client's encoder requests, polling after them cost 1.17-1.23x router
CPU per request for a p50 that moved within the spread between runs
(``docs/performance.md``, twelfth round). :func:`for_process` gives the
HTTP server the process's poll; it tells it when a request arrives
(:meth:`LoneCallPoll.request_arrived`) and when one is done
(:meth:`LoneCallPoll.request_done`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from typing import Any

from gevent import get_hub

# Kinds of call remembered, beyond which the averages start again
# (replicas come and go over a router's life).
MAX_KINDS = 4096
# A lone call is polled for only while most recent calls were lone too: a
# process under load finds itself with one call out now and then, and there
# the core is better left to the others.
SHARE_OF_CALLS = 16
LONE_SHARE = 0.9
# Every this many polls the core is offered to any other process waiting for
# it (sched_yield): a worker on the same core then answers as soon as it
# would have, and the poll does not burn the core it needs. At every poll it
# cost 20-40 µs of the lone call's latency where the worker has a core of its own.
YIELD_EVERY = 16
# A gap between requests counts as at most this many windows in the moving
# average of gaps: one long pause is a long gap, whatever its length.
LONG_GAP_WINDOWS = 4

_process_poll: LoneCallPoll | None = None


def for_process() -> LoneCallPoll | None:
    """The poll of this process's worker client, if it has one (gevent only)."""
    return _process_poll


def serve_process(poll: LoneCallPoll | None) -> None:
    """Make ``poll`` the one the process's HTTP server tells of requests."""
    global _process_poll
    _process_poll = poll


class LoneCallPoll:
    """Counts the process's outstanding calls to workers (:meth:`begin`,
    :meth:`end`), learns each kind's usual answer time, and keeps the loop
    polling after a lone call begins whose kind is usually quick.
    ``in_flight`` gives the process's requests in flight (streams included),
    the caller's own among them."""

    def __init__(self, window_us: int, in_flight: Callable[[], int] = lambda: 1) -> None:
        self.window_ns = window_us * 1000
        self.in_flight = in_flight
        self.outstanding = 0
        # Share of recent calls that began lone: a moving average over about
        # SHARE_OF_CALLS calls.
        self.lone_share = 1.0
        # Moving average of each kind's answer time, in ns.
        self.usual_ns: dict[Hashable, int] = {}
        self._until = 0
        self._watcher: Any = None
        self._polls = 0
        # Requests the HTTP server is handling, the moving average of the gap
        # from a response to the next request (0: none seen), and when the
        # process last had none (0: it has some).
        self.requests = 0
        self.usual_gap_ns = 0
        self._idle_since = 0
        # Whether every call since the last request arrived was answered
        # within the window.
        self._calls_quick = True

    def begin(self, kind: Hashable) -> int:
        """Count a call of ``kind`` as begun; the time it began, for :meth:`end`."""
        now = time.monotonic_ns()
        self.outstanding += 1
        watcher = self._watcher
        lone = self.outstanding == 1 and self.in_flight() <= 1
        self.lone_share += ((1.0 if lone else 0.0) - self.lone_share) / SHARE_OF_CALLS
        if not lone:
            if watcher is not None and watcher.active:
                watcher.stop()  # the process is busy
        elif self.window_ns and self.lone_share >= LONE_SHARE:
            usual = self.usual_ns.get(kind, 0)
            if usual <= self.window_ns:
                self._until = now + (min(self.window_ns, 2 * usual) if usual else self.window_ns)
                self._start_polling()
        return now

    def end(self, kind: Hashable, began_ns: int) -> None:
        """Count a call as answered (or failed) and learn how long it took."""
        took = time.monotonic_ns() - began_ns
        self.outstanding -= 1
        if took > self.window_ns:
            self._calls_quick = False
        watcher = self._watcher
        if watcher is not None and watcher.active:
            watcher.stop()
        usual = self.usual_ns.get(kind)
        if usual is None and len(self.usual_ns) >= MAX_KINDS:
            self.usual_ns.clear()
        self.usual_ns[kind] = took if usual is None else usual + (took - usual) // 4

    def request_arrived(self) -> None:
        """A request line was read: learn the gap since the process was idle."""
        self.requests += 1
        self._calls_quick = True
        if self._idle_since:
            gap = min(time.monotonic_ns() - self._idle_since, LONG_GAP_WINDOWS * self.window_ns)
            usual = self.usual_gap_ns
            self.usual_gap_ns = gap if not usual else usual + (gap - usual) // 4
            self._idle_since = 0
            watcher = self._watcher
            if watcher is not None and watcher.active and not self.outstanding:
                watcher.stop()

    def request_done(self) -> None:
        """A request's response was sent (or the request failed). With none
        left, poll for the next one if it usually comes within the window,
        and this one's calls to workers were answered within it too."""
        self.requests -= 1
        if self.requests or self.outstanding:
            return
        now = self._idle_since = time.monotonic_ns()
        gap = self.usual_gap_ns
        if gap and gap <= self.window_ns and self._calls_quick and self.lone_share >= LONE_SHARE:
            self._until = now + min(self.window_ns, 2 * gap)
            self._start_polling()

    @property
    def polling(self) -> bool:
        return self._watcher is not None and bool(self._watcher.active)

    def _start_polling(self) -> None:
        watcher = self._watcher
        if watcher is None:
            watcher = self._watcher = get_hub().loop.idle()
        if not watcher.active:
            watcher.start(self._poll)

    def _poll(self) -> None:
        """Called by the loop each time it finds nothing to do."""
        # A call out: polled for while it is the only one; between requests:
        # until the next arrives.
        busy = (self.outstanding != 1 or self.in_flight() > 1) if self.outstanding else self.requests > 0
        if busy or time.monotonic_ns() >= self._until:
            self._watcher.stop()
        else:
            self._polls += 1
            if self._polls % YIELD_EVERY == 0:
                os.sched_yield()
