"""The per-model cap on batch lines in flight, shared by every batch worker.

Batch traffic is low priority: at most ``cap`` lines of all batches run on
a model at once (``batch_lines_per_replica`` per ready replica, or the fixed
``batch_model_concurrency``), so interactive requests keep the rest of the
replicas' capacity and their latency. Interactive load lowers the cap
further: each interactive request the routers report in flight on the
model (:mod:`infergate_common.interactive_load`) takes one slot away, down
to ``batch_min_model_concurrency``. Lines already running finish; the
lower cap holds back the next ones.

The slots of a model are a Redis sorted set of leases scored by their
expiry time. A thread renews the leases this process holds every third of
``lease_s``, so a line may run for as long as it takes, while a worker
that dies holding slots frees them within ``lease_s``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import redis

from infergate_common.interactive_load import READ_FRESH, load_key
from infergate_common.registry_api import ModelRecord

from .settings import BatchSettings

log = logging.getLogger(__name__)

# KEYS: the model's slots, its interactive load. ARGV: now, the cap, the
# lease's expiry, the holder, the lease in ms, the floor of the cap.
_ACQUIRE = (
    READ_FRESH
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local cap = tonumber(ARGV[2])
cap = math.min(cap, math.max(tonumber(ARGV[6]), cap - interactive_in_flight(KEYS[2])))
if redis.call('ZCARD', KEYS[1]) < cap then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""
)


class ModelSlots:
    def __init__(self, client: redis.Redis, prefix: str, settings: BatchSettings, lease_s: float) -> None:
        self.redis = client
        self.prefix = f"{prefix}:batch:slots"
        self.stream_prefix = prefix
        self.settings = settings
        self.lease_s = lease_s
        self._acquire = client.register_script(_ACQUIRE)
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def cap(self, model: ModelRecord) -> int:
        if self.settings.batch_model_concurrency:
            return self.settings.batch_model_concurrency
        ready = sum(1 for replica in model.replicas if replica.ready)
        return max(1, ready) * self.settings.batch_lines_per_replica

    def in_use(self, model: str) -> int:
        return int(self.redis.zcount(f"{self.prefix}:{model}", time.time(), "+inf"))

    def try_acquire(self, model: ModelRecord, holder: str) -> bool:
        now = time.time()
        lease_ms = int(self.lease_s * 1000)
        key = f"{self.prefix}:{model.name}"
        floor = self.settings.batch_min_model_concurrency
        args: list[str | int | float] = [now, self.cap(model), now + self.lease_s, holder, lease_ms, floor]
        if not self._acquire(keys=[key, load_key(self.stream_prefix, model.name)], args=args):
            return False
        with self._lock:
            self._held[holder] = key
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew, name="batch-slot-leases", daemon=True)
                self._renewer.start()
        return True

    def release(self, model: ModelRecord, holder: str) -> None:
        with self._lock:
            self._held.pop(holder, None)
        self.redis.zrem(f"{self.prefix}:{model.name}", holder)

    def _renew(self) -> None:
        while True:
            time.sleep(self.lease_s / 3)
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                pipe = self.redis.pipeline(transaction=False)
                expiry = time.time() + self.lease_s
                for holder, key in held.items():
                    pipe.zadd(key, {holder: expiry}, xx=True)
                    pipe.pexpire(key, int(self.lease_s * 1000))
                pipe.execute()
            except redis.RedisError as exc:
                log.warning("renewing batch slot leases failed: %s", exc)

    @contextlib.contextmanager
    def held(self, model: ModelRecord, stop: Callable[[], bool]) -> Iterator[bool]:
        """Wait for a slot; yields True holding it, or False when ``stop()``
        turned true while waiting."""
        holder = uuid.uuid4().hex
        delay = 0.01
        while not self.try_acquire(model, holder):
            if stop():
                yield False
                return
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(0.2, delay * 2)
        try:
            yield True
        finally:
            self.release(model, holder)
