"""Cross-request micro-batching of numeric rows.

Request threads submit a 2-D array of rows and wait; one batcher thread runs
the model. Invariants:

* The model is called from the batcher thread only, one call at a time.
* An idle batcher runs a request as soon as it arrives (no timer): requests
  gather only while a prediction is running, so batching adds no latency at
  low load. ``max_wait_s`` > 0 makes a batch that is not full wait that long
  for more, counted from its oldest request.
* One call takes the oldest queued request and the requests after it that
  ask for the same output (``key``), up to ``max_requests`` requests and
  ``max_rows`` rows (a larger single request runs alone). Requests with
  another key keep their place in the queue.
* Each request gets exactly its own rows' predictions back, in order.
* A batch the model refuses is run again one request at a time, so a
  request that breaks the model fails alone; the thread keeps serving.
* ``max_requests=1`` turns batching off: one call per request, in arrival
  order.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infergate_common.errors import ServiceUnavailable

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray, Hashable], np.ndarray]


@dataclass(eq=False)
class _Request:
    rows: np.ndarray
    key: Hashable
    enqueued: float
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class BatchStats:
    """How many calls ran and how full they were (for ``/info``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.requests = 0
        self.rows = 0
        self.largest = 0
        self.failed = 0

    def record(self, requests: int, rows: int, failed: bool) -> None:
        with self.lock:
            self.calls += 1
            self.requests += requests
            self.rows += rows
            self.largest = max(self.largest, requests)
            self.failed += int(failed)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "calls": self.calls,
                "requests": self.requests,
                "rows": self.rows,
                "largest_batch_requests": self.largest,
                "failed_calls": self.failed,
            }


class RowBatcher:
    def __init__(
        self,
        predict: Predict,
        max_requests: int,
        max_rows: int,
        max_wait_s: float = 0.0,
        name: str = "tabular-batcher",
    ) -> None:
        self.predict = predict
        self.max_requests = max(1, max_requests)
        self.max_rows = max(1, max_rows)
        self.max_wait_s = max(0.0, max_wait_s)
        self.name = name
        self.stats = BatchStats()
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    def submit(self, rows: np.ndarray, key: Hashable = None) -> np.ndarray:
        """Queue ``rows`` (one request) and wait for their predictions."""
        request = _Request(rows, key, time.monotonic())
        with self._cond:
            if not self.alive():
                raise ServiceUnavailable("the model's batcher is not running")
            self._queue.append(request)
            self._cond.notify()
        while not request.done.wait(1.0):
            if not self.alive():
                raise ServiceUnavailable("the model's batcher stopped before answering")
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    # ----------------------------------------------------------- the thread

    def _full(self) -> bool:
        rows = 0
        key = self._queue[0].key
        count = 0
        for request in self._queue:
            if request.key != key:
                continue
            count += 1
            rows += len(request.rows)
            if count >= self.max_requests or rows >= self.max_rows:
                return True
        return False

    def _take(self) -> list[_Request]:
        first = self._queue.popleft()
        batch, rows = [first], len(first.rows)
        kept: list[_Request] = []
        while self._queue and len(batch) < self.max_requests:
            request = self._queue.popleft()
            if request.key != first.key or rows + len(request.rows) > self.max_rows:
                kept.append(request)
                continue
            batch.append(request)
            rows += len(request.rows)
        self._queue.extendleft(reversed(kept))
        return batch

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._stopped:
                if not self._queue:
                    self._cond.wait()
                    continue
                if self.max_wait_s > 0 and not self._full():
                    remaining = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
                    if remaining > 0:
                        self._cond.wait(remaining)
                        continue
                return self._take()
            return None

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not self._run(batch) and len(batch) > 1:
                for request in batch:
                    self._run([request])
            for request in batch:
                request.done.set()

    def _run(self, batch: list[_Request]) -> bool:
        """Predict one call's rows; False when the model raised (the error is
        kept on each request, to be replaced by a retry's outcome)."""
        rows = batch[0].rows
        try:
            if len(batch) > 1:
                rows = np.concatenate([r.rows for r in batch])
            out = self.predict(rows, batch[0].key)
            if len(out) != len(rows):
                raise RuntimeError(f"the model returned {len(out)} predictions for {len(rows)} rows")
        except Exception as exc:
            if len(batch) == 1:
                log.info("prediction failed: %s: %s", type(exc).__name__, exc)
            self.stats.record(len(batch), sum(len(r.rows) for r in batch), failed=True)
            for request in batch:
                request.error = exc
            return False
        self.stats.record(len(batch), len(rows), failed=False)
        start = 0
        for request in batch:
            end = start + len(request.rows)
            request.result = out[start:end]
            request.error = None
            start = end
        return True
