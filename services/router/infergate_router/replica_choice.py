"""Requests in flight per replica from this process, and the one place a
replica is chosen: :meth:`InFlight.choose` applies the model's routing
policy (:mod:`infergate_router.routing_policies`) to its ready replicas."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from infergate_common.errors import ServiceUnavailable
from infergate_common.registry_api import ModelRecord, ReplicaRecord

from .routing_policies import PrefixTable, choose_replica, current_hint


class InFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.prefixes = PrefixTable()

    def count(self, url: str) -> int:
        return self._counts.get(url, 0)

    def total(self) -> int:
        return sum(self._counts.values())

    def choose(self, model: ModelRecord, exclude: set[str] | None = None) -> ReplicaRecord:
        ready = [r for r in model.replicas if r.ready and r.url not in (exclude or set())]
        if not ready:
            raise ServiceUnavailable(f"Model with name {model.name} has no ready replica.")
        return choose_replica(
            model.routing_policy, ready, self.count, current_hint(), self.prefixes, model.name
        )

    def acquire(self, url: str) -> None:
        with self._lock:
            self._counts[url] = self._counts.get(url, 0) + 1

    def release(self, url: str) -> None:
        with self._lock:
            left = self._counts.get(url, 0) - 1
            if left > 0:
                self._counts[url] = left
            else:
                self._counts.pop(url, None)

    @contextlib.contextmanager
    def held(self, url: str) -> Iterator[None]:
        self.acquire(url)
        try:
            yield
        finally:
            self.release(url)
