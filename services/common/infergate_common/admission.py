"""What a replica holds, and whether it takes one more request.

A replica holds the calls in progress on its ``/generate`` and ``/encode``
routes plus the streamed generations its engine still runs or queues
(:meth:`infergate_common.engine.Engine.active_streams`). Past ``capacity``
a new request is refused at once with :class:`Overloaded` (503), so the
router tries another replica instead of queueing here without end. While
draining (on SIGTERM) every new request is refused the same way.

A streamed generation is counted twice for the instant between the engine
taking it and its ``/generate`` call returning; the error is on the safe
side and lasts microseconds.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator

from .engine import Engine
from .errors import Overloaded

# How long a refused client should wait before trying this replica again.
RETRY_AFTER_S = 1.0


class Admission:
    def __init__(self, engine: Engine, capacity: int) -> None:
        self.engine = engine
        self.capacity = capacity
        self.draining = threading.Event()
        self._lock = threading.Lock()
        self._calls: collections.Counter[str] = collections.Counter()

    def held(self) -> int:
        return sum(self._calls.values()) + len(self.engine.active_streams())

    def outstanding(self) -> set[str]:
        """Request ids of every call in progress and every open stream."""
        with self._lock:
            calls = set(self._calls)
        return calls | set(self.engine.active_streams())

    @contextlib.contextmanager
    def admit(self, request_id: str) -> Iterator[None]:
        with self._lock:
            if self.draining.is_set():
                raise Overloaded(
                    "this replica is shutting down", retry_after_s=RETRY_AFTER_S, code="replica_draining"
                )
            if self.held() >= self.capacity:
                raise Overloaded(
                    f"this replica is at its capacity of {self.capacity} requests",
                    retry_after_s=RETRY_AFTER_S,
                    code="replica_full",
                )
            self._calls[request_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._calls[request_id] -= 1
                if self._calls[request_id] <= 0:
                    del self._calls[request_id]

    def wait_idle(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait until nothing is held; False when ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.held() > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True
