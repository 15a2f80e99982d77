"""Where a job's output goes: back to a waiting HTTP thread (JSON answers)
or, entry by entry, to the request's Redis stream.

Stream entries are written by one outbox thread, in order, so the model
thread never waits on Redis; a second thread writes heartbeats for streams
that have been silent (queued, or generating slowly).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from infergate_common.errors import InfergateError
from infergate_common.streams import HEARTBEAT_INTERVAL_S, StreamWriter
from infergate_common.worker_api import TokenLogprob, ToolCallDelta

if TYPE_CHECKING:
    from .sequence import ChoiceState, Job

log = logging.getLogger(__name__)


class Sink:
    """Receives a job's progress; the JSON answer needs none of it."""

    def progress(self, choice: ChoiceState) -> None:
        """A token was accepted (the choice may have finished)."""

    def done(self, job: Job) -> None:
        """Every choice finished."""

    def error(self, job: Job, error: InfergateError) -> None:
        """The job failed."""


# The most queued writes sent to Redis in one round trip.
MAX_WRITES_PER_FLUSH = 512


class _PipelinedRedis:
    """The Redis client the outbox's StreamWriters see: while the outbox
    flushes, their commands join one pipeline (one round trip for every
    entry queued since the last flush) instead of one round trip each."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.current: Any = None

    def xadd(self, *args: Any, **kwargs: Any) -> Any:
        target = self.current if self.current is not None else self.redis
        return target.xadd(*args, **kwargs)

    def pipeline(self, transaction: bool = False) -> Any:
        if self.current is None:
            return self.redis.pipeline(transaction=transaction)
        return _JoinedPipeline(self.current)


class _JoinedPipeline:
    """A StreamWriter's own pipeline, folded into the outbox's."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def xadd(self, *args: Any, **kwargs: Any) -> None:
        self.pipeline.xadd(*args, **kwargs)

    def expire(self, *args: Any, **kwargs: Any) -> None:
        self.pipeline.expire(*args, **kwargs)

    def execute(self) -> list[Any]:
        return []


class StreamOutbox:
    """Writes stream entries in order on its own thread, with heartbeats."""

    def __init__(self, redis: Any, prefix: str, heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.redis = _PipelinedRedis(redis)
        self.prefix = prefix
        self.heartbeat_interval_s = heartbeat_interval_s
        self._queue: queue.SimpleQueue[list[Callable[[], None]] | None] = queue.SimpleQueue()
        # Writes of the current scheduler step, queued together by flush():
        # one hand-over to the writer thread per step, not one per token.
        self._pending: list[Callable[[], None]] = []
        self._pending_lock = threading.Lock()
        self._active: dict[int, StreamSink] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="stream-outbox", daemon=True)
        self._beater = threading.Thread(target=self._heartbeat_loop, name="stream-heartbeat", daemon=True)
        self._writer.start()
        self._beater.start()

    def open(self, request_id: str) -> StreamSink:
        sink = StreamSink(self, StreamWriter(self.redis, request_id, self.prefix))
        with self._lock:
            self._active[id(sink)] = sink
        return sink

    def submit(self, write: Callable[[], None]) -> None:
        with self._pending_lock:
            self._pending.append(write)

    def flush(self) -> None:
        """Hand the writes submitted so far to the writer thread."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        if pending:
            self._queue.put(pending)

    def submit_now(self, write: Callable[[], None]) -> None:
        self._queue.put([write])

    def release(self, sink: StreamSink) -> None:
        with self._lock:
            self._active.pop(id(sink), None)

    def _write_loop(self) -> None:
        while True:
            batches = [self._queue.get()]
            while sum(len(batch or ()) for batch in batches) < MAX_WRITES_PER_FLUSH:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._flush([write for batch in batches if batch is not None for write in batch])
            if None in batches:
                return

    def _flush(self, writes: list[Callable[[], None]]) -> None:
        if not writes:
            return
        pipeline = self.redis.redis.pipeline(transaction=False)
        self.redis.current = pipeline
        try:
            for write in writes:
                write()
        finally:
            self.redis.current = None
        try:
            pipeline.execute()
        except Exception:
            log.exception("writing %d stream entries failed", len(writes))

    def _heartbeat_loop(self) -> None:
        # Silence of half the interval triggers a heartbeat, so readers see
        # one at least every interval even with scheduling jitter.
        quiet = self.heartbeat_interval_s / 2
        while not self._stopped.wait(quiet / 2):
            now = time.monotonic()
            with self._lock:
                silent = [sink for sink in self._active.values() if now - sink.last_sent >= quiet]
            for sink in silent:
                sink.heartbeat()

    def close(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout)


class StreamSink(Sink):
    """One request's stream: deltas per choice, then done or error."""

    def __init__(self, outbox: StreamOutbox, writer: StreamWriter) -> None:
        self.outbox = outbox
        self.writer = writer
        self.last_sent = time.monotonic()

    def _send(self, write: Callable[[], None]) -> None:
        self.last_sent = time.monotonic()
        self.outbox.submit(write)

    def heartbeat(self) -> None:
        self.last_sent = time.monotonic()
        self.outbox.submit_now(self.writer.heartbeat)

    def progress(self, choice: ChoiceState) -> None:
        end = choice.releasable()
        text = choice.text[choice.sent_chars : end]
        logprobs: list[TokenLogprob] | None = None
        if choice.logprobs is not None:
            logprobs = choice.unsent_logprobs
        if not choice.echo_sent:
            choice.echo_sent = True
            echo = choice.job.prompt.echo_text
            if echo is not None:
                text = echo + text
                if logprobs is not None:
                    logprobs = (choice.job.prompt_logprobs or []) + logprobs
        calls: list[ToolCallDelta] = []
        if choice.calls is not None:
            text, calls = choice.calls.feed(text, final=choice.finished)
        if not text and not calls and not choice.finished:
            choice.sent_chars = end
            return
        tokens, reason, index = choice.unsent_tokens, choice.reported_finish_reason, choice.index
        choice.sent_chars = end
        choice.unsent_tokens = 0
        choice.unsent_logprobs = []
        self._send(lambda: self.writer.delta(index, text, tokens, logprobs, reason, calls))

    def done(self, job: Job) -> None:
        reasons = {choice.index: choice.finish_reason or "abort" for choice in job.choices}
        usage = job.usage()
        self._send(lambda: self.writer.done(reasons, usage))
        self.outbox.release(self)

    def error(self, job: Job, error: InfergateError) -> None:
        self._send(lambda: self.writer.error(error.message, status=error.status, type=error.type))
        self.outbox.release(self)
