"""Notice a client that disconnects while its non-streaming request waits
on a worker, so the worker's generation is cancelled instead of running to
the end for nobody.

Under gunicorn's gevent workers the WSGI environ carries the client socket
(``gunicorn.sock`` under the ``gevent_pywsgi`` worker the router runs,
``gunicorn.socket`` under ``gevent``). From ``WATCH_AFTER_S`` after the
first call on (a timer of the loop), a watcher of the loop waits for the
socket to turn readable: a request answered sooner (most) never arms it,
and a client gone sooner is noticed that much later. No greenlet waits per
open request (a stream may be open for minutes); one is started only to
look at a socket that turned readable. A read of nothing is the client
gone; data (a pipelined request) ends the watch. Everything is stopped as
soon as the last call watched for returns, before the response is written,
so the server alone reads the socket afterwards. Elsewhere (the Flask test
client, threads) nothing is watched.

A look at the socket never waits (:func:`.socket_peek.peek`). A watcher is
used by one gevent hub only, whose greenlets never switch inside its
bookkeeping, so it takes no lock.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey

from .socket_peek import peek

log = logging.getLogger(__name__)

# libev's event mask for "readable".
READ = 1
# How long a call runs before its client is watched.
WATCH_AFTER_S = 0.05
_ENVIRON_KEY = "infergate.client_watcher"


class ClientWatcher:
    """Calls every registered ``on_gone`` once if the client disconnects."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._timer: Any = None
        self._io: Any = None
        self._greenlet: Any = None

    def gone(self) -> bool:
        """Whether the client has disconnected already (a check that does
        not wait): a request whose client left while it queued is not
        started on a worker."""
        return self._look() is True

    def _look(self) -> bool | None:
        """What the socket holds now: None when nothing (the client is still
        there), True when the client is gone (a read of nothing, or an
        error), False when it sent data (a pipelined request)."""
        try:
            data = peek(self.sock)
        except (OSError, ValueError):
            return True
        return None if data is None else not data

    def __call__(self, on_gone: Callable[[], None]) -> Callable[[], None]:
        token = self._next
        self._next += 1
        self._callbacks[token] = on_gone
        if self._timer is None and self._io is None and self._greenlet is None:
            # A timer of the loop, not a greenlet: most requests end before it fires.
            self._timer = gevent.get_hub().loop.timer(WATCH_AFTER_S)
            self._timer.start(self._begin)

        def stop() -> None:
            self._callbacks.pop(token, None)
            timer = io = greenlet = None
            if not self._callbacks:
                timer, io, greenlet = self._timer, self._io, self._greenlet
                self._timer = self._io = self._greenlet = None
            for watcher in (timer, io):
                if watcher is not None:
                    watcher.close()
            if greenlet is not None:
                greenlet.kill(block=True)

        return stop

    def _begin(self) -> None:
        """In the loop, once the first call has run ``WATCH_AFTER_S``."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()
            self._arm()

    def _arm(self) -> None:
        """Wait for the socket to turn readable with a watcher of the loop:
        no greenlet (and no stack) per open request until then."""
        try:
            io = gevent.get_hub().loop.io(self.sock.fileno(), READ)
        except (OSError, ValueError):
            self._greenlet = gevent.spawn(self._check)
            return
        self._io = io
        io.start(self._readable)

    def _readable(self) -> None:
        """In the loop: data or the end of the connection is there."""
        io, self._io = self._io, None
        if io is not None:
            io.close()
            self._greenlet = gevent.spawn(self._check)

    def _check(self) -> None:
        gone = self._look()
        self._greenlet = None
        if gone is None:
            # Readable no more (another reader took it): watch again.
            if self._callbacks:
                self._arm()
            return
        callbacks = list(self._callbacks.values()) if gone else []
        self._callbacks.clear()
        if callbacks:
            log.info("client disconnected: cancelling its generation")
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()


def client_watch(environ: dict[str, Any]) -> ClientWatcher | None:
    """The request's watcher (one per request, shared by its calls)."""
    sock = environ.get("gunicorn.socket") or environ.get("gunicorn.sock")
    if not isinstance(sock, socket.socket) or not monkey.is_module_patched("socket"):
        return None
    watcher = environ.get(_ENVIRON_KEY)
    if watcher is None:
        watcher = environ[_ENVIRON_KEY] = ClientWatcher(sock)
    return watcher  # type: ignore[no-any-return]
