"""Notice a client that disconnects while its non-streaming request waits
on a worker, so the worker's generation is cancelled instead of running to
the end for nobody.

Under gunicorn's gevent workers the WSGI environ carries the client socket
(``gunicorn.socket``); one greenlet per request waits for it to turn
readable. A read of nothing is the client gone; data (a pipelined request)
ends the watch. Elsewhere (the Flask test client) nothing is watched.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.5


class ClientWatcher:
    """Calls every registered ``on_gone`` once if the client disconnects."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._running = False

    def __call__(self, on_gone: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            token = self._next
            self._next += 1
            self._callbacks[token] = on_gone
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="client-watch", daemon=True).start()

        def stop() -> None:
            with self._lock:
                self._callbacks.pop(token, None)

        return stop

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._callbacks:
                    self._running = False
                    return
            try:
                readable, _, _ = select.select([self.sock], [], [], POLL_S)
                if not readable:
                    continue
                gone = not self.sock.recv(1, socket.MSG_PEEK)
            except (OSError, ValueError):
                gone = True
            with self._lock:
                callbacks = list(self._callbacks.values()) if gone else []
                self._callbacks.clear()
                self._running = False
            if callbacks:
                log.info("client disconnected: cancelling its generation")
            for callback in callbacks:
                with contextlib.suppress(Exception):
                    callback()
            return


def client_watch(environ: dict[str, Any]) -> ClientWatcher | None:
    sock = environ.get("gunicorn.socket")
    return ClientWatcher(sock) if isinstance(sock, socket.socket) else None
