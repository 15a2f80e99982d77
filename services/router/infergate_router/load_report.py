"""Reports this process's interactive requests in flight per model to
Redis (:mod:`infergate_common.interactive_load`), where the batch workers
read them and run fewer batch lines while interactive traffic is there.

One background loop per process (a greenlet under gunicorn's gevent
worker), started with the first request; it writes only while this process
has requests in flight or has just had some, one script call per round.
The batch workers build the router's parts too but never start it: their
own lines are not interactive traffic.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import redis

from infergate_common.interactive_load import REPORT, load_key
from infergate_common.periodic import run_every

from .replica_choice import InFlight

log = logging.getLogger(__name__)


class LoadReporter:
    def __init__(self, client: redis.Redis, prefix: str, inflight: InFlight, interval_s: float) -> None:
        self.client = client
        self.prefix = prefix
        self.inflight = inflight
        self.interval_s = interval_s
        # A field outlives three missed rounds, no more.
        self.life_ms = max(1000, int(interval_s * 3000))
        self.field = f"{socket.gethostname()}:{os.getpid()}"
        self._script: Any = None
        self._reported: dict[str, int] = {}
        self._stop = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()

    def ensure_started(self) -> None:
        if self._started or self.interval_s <= 0:
            return
        with self._start_lock:
            if not self._started:
                threading.Thread(target=self._run, name="load-report", daemon=True).start()
                self._started = True

    def stop(self) -> None:
        self._stop.set()

    def report(self) -> None:
        """One round: this process's counts, and a 0 for each model it
        reported before and no longer has requests on."""
        counts = self.inflight.by_model()
        changed = {m: c for m, c in counts.items() if c or self._reported.get(m)}
        changed.update({m: 0 for m in self._reported if m not in counts})
        if not changed:
            return
        if self._script is None:
            self._script = self.client.register_script(REPORT)
        models = list(changed)
        keys = [load_key(self.prefix, model) for model in models]
        self._script(keys=keys, args=[self.field, self.life_ms, *(changed[m] for m in models)])
        self._reported = {m: c for m, c in changed.items() if c}

    def _run(self) -> None:
        run_every(
            self.interval_s,
            self._stop,
            self.report,
            (redis.RedisError,),
            log,
            "cannot report interactive load: %s",
            "interactive load reports reach Redis again",
        )
