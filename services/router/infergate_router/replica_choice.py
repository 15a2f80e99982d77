"""Requests in flight per replica from this process, and the one place a
replica is chosen: :meth:`InFlight.choose` applies the model's routing
policy (:mod:`infergate_router.routing_policies`) to its ready replicas
that have room.

A replica has room while this process holds fewer requests on it than the
capacity it advertises, and it has not answered "full" in the last
``FULL_HOLD_S`` seconds (other router processes share it too)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterator

from infergate_common.errors import Overloaded, ServiceUnavailable
from infergate_common.registry_api import ModelRecord, ReplicaRecord

from .routing_policies import PrefixTable, choose_replica, current_hint

# How long a replica that answered "full" is passed over.
FULL_HOLD_S = 0.1


class InFlight:
    """Requests in flight per replica URL. ``on_change(model, delta)``, when
    given, hears every acquire (+1) and release (-1) with the model the
    replica was chosen for (the router's in-flight gauge)."""

    def __init__(self, on_change: Callable[[str, int], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        # The sum of _counts, kept as they change.
        self._total = 0
        self._full_until: dict[str, float] = {}
        self._room = threading.Condition(self._lock)
        # Callers in wait_for_room: a release wakes them only when there are any.
        self._waiting = 0
        self.prefixes = PrefixTable()
        self._model_of: dict[str, str] = {}
        self._on_change = on_change

    def count(self, url: str) -> int:
        return self._counts.get(url, 0)

    def total(self) -> int:
        return self._total

    def by_model(self) -> dict[str, int]:
        """Requests in flight per model name (models with none left out)."""
        with self._lock:
            counts = list(self._counts.items())
        out: dict[str, int] = {}
        for url, count in counts:
            model = self._model_of.get(url, "")
            if model:
                out[model] = out.get(model, 0) + count
        return out

    def has_room(self, replica: ReplicaRecord, now: float) -> bool:
        capacity = replica.info.capacity if replica.info is not None else None
        if capacity is not None and self.count(replica.url) >= capacity:
            return False
        return self._full_until.get(replica.url, 0.0) <= now

    def choose(self, model: ModelRecord, exclude: set[str] | None = None) -> ReplicaRecord:
        """The replica to use; :class:`ServiceUnavailable` when none is
        ready, :class:`Overloaded` when every ready one (not in
        ``exclude``) is full."""
        ready = [r for r in model.replicas if r.ready]
        if not ready:
            raise ServiceUnavailable(f"Model with name {model.name} has no ready replica.")
        now = time.monotonic()
        skip = exclude or set()
        open_ = [r for r in ready if r.url not in skip and self.has_room(r, now)]
        if not open_:
            raise Overloaded(f"every replica of model {model.name} is busy")
        # Ready but passed over now: under prefix-aware they keep their prefixes.
        passed_over: Collection[str] = ()
        if len(open_) < len(ready):
            passed_over = {r.url for r in ready} - {r.url for r in open_}
        chosen = choose_replica(
            model.routing_policy, open_, self.count, current_hint(), self.prefixes, model.name, passed_over
        )
        self._model_of[chosen.url] = model.name
        return chosen

    def mark_full(self, url: str, hold_s: float = FULL_HOLD_S) -> None:
        with self._lock:
            self._full_until[url] = time.monotonic() + hold_s

    def wait_for_room(self, timeout_s: float) -> None:
        """Until a request of this process ends somewhere, or ``timeout_s``."""
        with self._room:
            self._waiting += 1
            try:
                self._room.wait(timeout_s)
            finally:
                self._waiting -= 1

    def acquire(self, url: str) -> None:
        with self._lock:
            self._counts[url] = self._counts.get(url, 0) + 1
            self._total += 1
        if self._on_change is not None:
            self._on_change(self._model_of.get(url, ""), 1)

    def release(self, url: str) -> None:
        with self._lock:
            held = self._counts.get(url, 0)
            if held:
                self._total -= 1
            left = held - 1
            if left > 0:
                self._counts[url] = left
            else:
                self._counts.pop(url, None)
            self._full_until.pop(url, None)
            if self._waiting:
                self._room.notify_all()
        if self._on_change is not None:
            self._on_change(self._model_of.get(url, ""), -1)

    @contextlib.contextmanager
    def held(self, url: str) -> Iterator[None]:
        self.acquire(url)
        try:
            yield
        finally:
            self.release(url)
