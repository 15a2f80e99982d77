"""Sweeps expired replicas out of the registry and announces them, and
removes models whose replicas have all been gone for the model expiry.

Listings already hide a replica whose lease has passed; the sweeper removes
it and publishes ``replica_expired`` so routers drop their caches at once.
A model left without replicas for ``model_expiry_s`` is removed and
``model_expired`` published (``/v2/health/ready`` would otherwise wait for
it forever); 0 keeps such models.
Several registry processes may sweep at the same time: the removal is one
atomic script, so each expiry is announced once.
"""

from __future__ import annotations

import logging
import threading

import redis

from infergate_common.periodic import run_every

from .store import RegistryStore

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, store: RegistryStore, interval_s: float, model_expiry_s: float = 0.0) -> None:
        self.store = store
        self.interval_s = interval_s
        self.model_expiry_s = model_expiry_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="registry-reaper", daemon=True)

    def start(self) -> Reaper:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        run_every(
            self.interval_s,
            self.stopped,
            self._sweep,
            (redis.RedisError,),
            log,
            "cannot sweep expired replicas: %s",
            "redis reachable again",
        )

    def _sweep(self) -> None:
        for name, url in self.store.reap_expired():
            log.info("replica expired", extra={"model": name, "replica": url})
        if self.model_expiry_s > 0:
            for name in self.store.expire_vacant(self.model_expiry_s):
                log.info("model expired: no replica left", extra={"model": name})
