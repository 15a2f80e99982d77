"""Drops the model cache when the registry announces a change.

One background subscriber per process (a greenlet under gunicorn's gevent
worker, which patches ``threading``) listens on the registry's pub/sub
channel and reconnects with a back-off when Redis goes away. Messages missed
while disconnected are covered by dropping the cache on every reconnect
(and by the cache's TTL).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from infergate_common.registry_api import changes_channel

log = logging.getLogger(__name__)


class RegistryChangeListener:
    def __init__(self, redis_url: str, prefix: str, on_change: Callable[[], None]) -> None:
        self.redis_url = redis_url
        self.channel = changes_channel(prefix)
        self.on_change = on_change
        self._stop = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()

    def ensure_started(self) -> None:
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                threading.Thread(target=self._run, name="registry-changes", daemon=True).start()
                self._started = True

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff = 0.2
        failed = False
        while not self._stop.is_set():
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=None)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.on_change()
                if failed:
                    log.info("registry change channel reconnected")
                failed, backoff = False, 0.2
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self.on_change()
            except Exception as exc:
                if not failed:
                    log.warning("registry change channel lost: %s", exc)
                failed = True
                self.on_change()
            finally:
                pubsub.close()
                client.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)
