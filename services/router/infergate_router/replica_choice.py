"""Among a model's ready replicas, the one with the fewest requests in flight
from this process. Ties are broken at random so that several router
processes do not all pile onto the same replica."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterator

from infergate_common.errors import ServiceUnavailable
from infergate_common.registry_api import ModelRecord, ReplicaRecord


class InFlight:
    """Requests in flight per replica URL. ``on_change(model, delta)``, when
    given, hears every acquire (+1) and release (-1) with the model the
    replica was chosen for (the router's in-flight gauge)."""

    def __init__(self, on_change: Callable[[str, int], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._model_of: dict[str, str] = {}
        self._on_change = on_change

    def count(self, url: str) -> int:
        return self._counts.get(url, 0)

    def total(self) -> int:
        return sum(self._counts.values())

    def choose(self, model: ModelRecord, exclude: set[str] | None = None) -> ReplicaRecord:
        ready = [r for r in model.replicas if r.ready and r.url not in (exclude or set())]
        if not ready:
            raise ServiceUnavailable(f"Model with name {model.name} has no ready replica.")
        lowest = min(self.count(r.url) for r in ready)
        chosen = random.choice([r for r in ready if self.count(r.url) == lowest])
        self._model_of[chosen.url] = model.name
        return chosen

    def acquire(self, url: str) -> None:
        with self._lock:
            self._counts[url] = self._counts.get(url, 0) + 1
        if self._on_change is not None:
            self._on_change(self._model_of.get(url, ""), 1)

    def release(self, url: str) -> None:
        with self._lock:
            left = self._counts.get(url, 0) - 1
            if left > 0:
                self._counts[url] = left
            else:
                self._counts.pop(url, None)
        if self._on_change is not None:
            self._on_change(self._model_of.get(url, ""), -1)

    @contextlib.contextmanager
    def held(self, url: str) -> Iterator[None]:
        self.acquire(url)
        try:
            yield
        finally:
            self.release(url)
