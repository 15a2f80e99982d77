"""Cross-request micro-batching for encoder tasks.

Request threads submit their rows (one per input) and wait; one batcher
thread runs one forward pass per batch of at most ``max_batch_size`` rows
and hands each row's result back to its request. It batches as continuous
batching does: when the model is idle, whatever is queued runs at once (one
client waits for nothing); while a forward pass runs, new rows queue, and
the next batch takes all of them. ``max_wait_s`` (0 by default) adds a
gathering window after the oldest queued row for an idle model, for
workloads that prefer fuller batches to latency. A batch that fails fails
only the requests with rows in it; the thread keeps serving.
``max_batch_size=1`` runs every row alone (batching off).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from infergate_common import worker_metrics
from infergate_common.errors import InfergateError, ServiceUnavailable

log = logging.getLogger(__name__)

RowT = TypeVar("RowT")
ResultT = TypeVar("ResultT")


@dataclass
class _Pending:
    """One request's rows and, as they come, their results."""

    size: int
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.results = [None] * self.size
        self.remaining = self.size


@dataclass
class _QueuedRow:
    pending: _Pending
    index: int
    row: Any
    enqueued: float


class BatchStats:
    """How many batches ran and how full they were (for ``/info``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.rows = 0
        self.failed_batches = 0
        self.largest = 0
        self.sizes: collections.Counter[int] = collections.Counter()

    def record(self, size: int, failed: bool) -> None:
        with self.lock:
            self.batches += 1
            self.rows += size
            self.largest = max(self.largest, size)
            self.sizes[size] += 1
            if failed:
                self.failed_batches += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "batches": self.batches,
                "rows": self.rows,
                "failed_batches": self.failed_batches,
                "largest_batch": self.largest,
                "batch_sizes": {str(size): count for size, count in sorted(self.sizes.items())},
            }


class MicroBatcher(Generic[RowT, ResultT]):
    """Runs ``run_batch(rows) -> results`` (one result per row, same order)
    on one thread over rows gathered from concurrent requests."""

    def __init__(
        self,
        run_batch: Callable[[list[RowT]], list[ResultT]],
        max_batch_size: int,
        max_wait_s: float,
        name: str = "encoder-batcher",
        model: str = "",
    ) -> None:
        self.run_batch = run_batch
        # The `model` label of the worker metrics.
        self.model = model
        self._running = 0
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max(0.0, max_wait_s)
        self.name = name
        self.stats = BatchStats()
        self._queue: collections.deque[_QueuedRow] = collections.deque()
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

    def load(self) -> dict[str, int]:
        """Rows in the batch that runs now, and rows queued behind it."""
        return {"running": self._running, "waiting": len(self._queue)}

    def submit(self, rows: list[RowT]) -> list[ResultT]:
        """Queue ``rows`` as one request and wait for their results."""
        if not rows:
            return []
        pending = _Pending(size=len(rows))
        now = time.monotonic()
        with self._cond:
            if not self.alive():
                raise ServiceUnavailable("encoder batcher is not running")
            self._queue.extend(_QueuedRow(pending, i, row, now) for i, row in enumerate(rows))
            self._cond.notify_all()
        while not pending.done.wait(1.0):
            if not self.alive():
                raise ServiceUnavailable("encoder batcher stopped before answering")
        if pending.error is not None:
            if isinstance(pending.error, InfergateError):
                raise pending.error
            raise InfergateError(
                f"batch failed: {type(pending.error).__name__}: {pending.error}"
            ) from pending.error
        return list(pending.results)

    # ----------------------------------------------------------- the thread

    def _next_batch(self) -> list[_QueuedRow] | None:
        with self._cond:
            while not self._stopped:
                self._drop_failed()
                if not self._queue:
                    self._cond.wait()
                    continue
                # Rows that queued while a batch ran are already past their
                # deadline: they go at once, and with no window, so does
                # the first row to reach an idle model.
                if self.max_wait_s <= 0 or len(self._queue) >= self.max_batch_size:
                    count = min(self.max_batch_size, len(self._queue))
                    return [self._queue.popleft() for _ in range(count)]
                deadline = self._queue[0].enqueued + self.max_wait_s
                remaining = deadline - time.monotonic()
                if len(self._queue) >= self.max_batch_size or remaining <= 0:
                    count = min(self.max_batch_size, len(self._queue))
                    return [self._queue.popleft() for _ in range(count)]
                self._cond.wait(remaining)
            return None

    def _drop_failed(self) -> None:
        # Rows of a request whose earlier batch failed have no one to answer.
        while self._queue and self._queue[0].pending.error is not None:
            self._queue.popleft()
        if any(item.pending.error is not None for item in self._queue):
            kept = [item for item in self._queue if item.pending.error is None]
            self._queue.clear()
            self._queue.extend(kept)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: list[_QueuedRow]) -> None:
        started = time.monotonic()
        worker_metrics.observe_batch(self.model, "encode", len(batch))
        for item in batch:
            if item.index == 0:
                worker_metrics.observe_queue_time(self.model, started - item.enqueued)
        self._running = len(batch)
        try:
            results = self.run_batch([item.row for item in batch])
            if len(results) != len(batch):
                raise InfergateError(f"batch returned {len(results)} results for {len(batch)} rows")
        except Exception as exc:
            log.exception("encoder batch failed", extra={"batch_size": len(batch)})
            self._running = 0
            self.stats.record(len(batch), failed=True)
            for item in batch:
                if item.pending.error is None:
                    item.pending.error = exc
                    item.pending.done.set()
            return
        self._running = 0
        self.stats.record(len(batch), failed=False)
        for item, result in zip(batch, results, strict=True):
            pending = item.pending
            if pending.error is not None:
                continue
            pending.results[item.index] = result
            pending.remaining -= 1
            if pending.remaining == 0:
                pending.done.set()
