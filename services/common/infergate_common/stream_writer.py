"""The one writer of token streams, shared by every engine.

An engine opens one :class:`OpenStream` per streaming request and calls its
``delta``/``done``/``error`` in order from one thread (or one event loop);
the stream numbers its deltas (``seq``) there. The entries go to an outbox
that writes them to Redis on its own thread (:class:`StreamOutbox`) or task
(:class:`AsyncStreamOutbox`), so the engine never waits on Redis:

* everything queued while the previous batch was in flight goes out in the
  next one, one round trip for many streams (a batching engine queues a
  whole step with ``put`` and hands it over with ``flush``): one call of
  the :data:`APPEND` script, which Redis runs atomically, as ``MULTI``/``EXEC``
  would run the ``XADD``s, at a quarter of the client's CPU per entry
  (redis-py spends about 25 µs building and reading each pipelined command);
* a batch that fails is retried (:class:`WriteRetry`, bounded in attempts);
  after that its streams are *failed*: ``on_failure(request_id)`` stops each
  generation, nothing more of them is written, and each is owed an ``error``
  entry, retried until Redis takes it (its earlier entries are trimmed in
  the same round trip, which frees memory when Redis is full) or the
  stream's expiry has passed;
* an entry that cannot be encoded fails its own stream only (an ``error``
  entry, 500), and a writer that meets any other unexpected error fails
  the batch in hand and goes on: the writer thread or task never dies, so
  one bad entry cannot stall every later stream of the worker;
* streams silent for half the heartbeat interval get a heartbeat;
* every stream failed either way is counted in
  ``infergate_worker_stream_write_failures_total`` (by ``model`` and
  ``reason``: ``redis`` or ``internal``).

The protocol itself is :mod:`infergate_common.streams`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import worker_metrics
from .streams import (
    DEFAULT_MAXLEN,
    DEFAULT_TTL_S,
    HEARTBEAT_INTERVAL_S,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    HeartbeatEvent,
    StreamEvent,
    encode_event,
    is_final,
    stream_key,
)
from .worker_api import FinishReason, TokenLogprob, ToolCallDelta, Usage

log = logging.getLogger(__name__)

# The most entries sent to Redis in one round trip.
MAX_ENTRIES_PER_BATCH = 512
# A write that takes longer than this counts as failed (and is retried).
WRITE_TIMEOUT_S = 2.0
# How often owed error entries are retried while nothing else is written.
OWED_RETRY_S = 0.25

OnFailure = Callable[[str], object]

# KEYS: one stream per entry (a stream with several entries repeats).
# ARGV[1]: MAXLEN (approximate), ARGV[2]: the expiry in seconds; then per
# entry: its field count, 1 to set the stream's expiry after it (else 0),
# and its fields and values. A script that has started writing runs to its
# end, so a batch lands whole, or not at all when Redis refuses the first
# write (out of memory).
APPEND = """
local at = 3
for k = 1, #KEYS do
  local count = tonumber(ARGV[at])
  local expire = ARGV[at + 1]
  local fields = {}
  for j = 1, 2 * count do
    fields[j] = ARGV[at + 1 + j]
  end
  at = at + 2 + 2 * count
  redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  if expire == '1' then
    redis.call('EXPIRE', KEYS[k], ARGV[2])
  end
end
return #KEYS
"""


@dataclass(frozen=True)
class WriteRetry:
    """How a failed batch is retried: ``attempts`` tries in all, sleeping
    ``first_delay_s``, then twice as long each time, at most ``max_delay_s``.
    Once Redis has been failing for longer than those sleeps add up to
    (:meth:`budget_s`), a batch gets a single try: a long outage fails the
    streams it holds up instead of stalling the writer batch after batch.
    That time counts from the first failure *seen*, not from when its try
    began: one write that outlived its timeout (a machine that stalled for
    a few seconds, not Redis) is still retried at once. The defaults give
    up within about a second when Redis refuses connections, well inside
    the router's heartbeat deadline."""

    attempts: int = 5
    first_delay_s: float = 0.05
    max_delay_s: float = 0.4

    def delays(self) -> list[float]:
        out, delay = [], self.first_delay_s
        for _ in range(self.attempts - 1):
            out.append(delay)
            delay = min(delay * 2, self.max_delay_s)
        return out

    def budget_s(self) -> float:
        return sum(self.delays())


def stream_client(redis_url: str, timeout_s: float = WRITE_TIMEOUT_S) -> Any:
    """A client for :class:`StreamOutbox`: bounded socket waits, and no
    retries of its own (the outbox decides what is retried)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def async_stream_client(redis_url: str, timeout_s: float = WRITE_TIMEOUT_S) -> Any:
    """The :mod:`redis.asyncio` twin of :func:`stream_client`."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.asyncio.Redis.from_url(
        redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def describe_failure(exc: BaseException) -> str:
    """What went wrong, in words a client can act on."""
    import redis

    if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in str(exc):
        return "Redis is full (maxmemory reached)"
    if isinstance(exc, (redis.exceptions.TimeoutError, TimeoutError)):
        return f"Redis did not answer in time ({type(exc).__name__})"
    if isinstance(exc, (redis.exceptions.ConnectionError, OSError)):
        return f"Redis unreachable ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


class OpenStream:
    """One request's stream, as its engine sees it. Call from one thread
    (or loop) in order; writes after the final entry are ignored."""

    def __init__(self, outbox: _Outbox, request_id: str, key: str) -> None:
        self.outbox = outbox
        self.request_id = request_id
        self.key = key
        self.next_seq = 0
        # The final entry has been queued (no heartbeats after it).
        self.closed = False
        # Redis refused this stream's entries: nothing more is written.
        self.failed = False
        self.last_put = time.monotonic()
        # When the key's expiry must next be set (0: with the next entry).
        self.expire_due = 0.0

    def delta(
        self,
        index: int,
        text: str,
        tokens: int,
        logprobs: list[TokenLogprob] | None = None,
        finish_reason: FinishReason | None = None,
        tool_calls: list[ToolCallDelta] | None = None,
    ) -> None:
        if self.closed:
            return
        event = DeltaEvent(
            seq=self.next_seq,
            index=index,
            text=text,
            tokens=tokens,
            logprobs=logprobs,
            finish_reason=finish_reason,
            tool_calls=tool_calls or None,
        )
        self.next_seq += 1
        self.outbox.put(self, event)

    def done(self, finish_reasons: dict[int, FinishReason], usage: Usage) -> None:
        if self.closed:
            return
        reasons = {str(k): v for k, v in finish_reasons.items()}
        self._end(DoneEvent(deltas=self.next_seq, finish_reasons=reasons, usage=usage))

    def error(self, message: str, status: int = 500, type: str = "internal_error") -> None:
        if self.closed:
            return
        self._end(ErrorEvent(status=status, type=type, message=message))

    def _end(self, event: StreamEvent) -> None:
        self.closed = True
        self.outbox.put(self, event)
        self.outbox.release(self)


Entry = tuple[OpenStream, StreamEvent]


def _internal_error(what: str) -> ErrorEvent:
    return ErrorEvent(
        status=500,
        type="internal_error",
        message=f"the token stream broke: {what}; the generation was stopped",
    )


class _Outbox:
    """What both flavours share: the streams, the batches' commands, the
    failures and the error entries they owe. No I/O here."""

    def __init__(
        self,
        prefix: str,
        on_failure: OnFailure | None,
        maxlen: int,
        ttl_s: int,
        retry: WriteRetry,
        heartbeat_interval_s: float | None,
        model: str,
    ) -> None:
        self.prefix = prefix
        self.model = model
        self.on_failure = on_failure
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self.retry = retry
        self.heartbeat_interval_s = heartbeat_interval_s
        self._active: dict[int, OpenStream] = {}
        self._active_lock = threading.Lock()
        # Failed streams' keys -> (their error entry, give up after this monotonic time).
        self._owed: dict[str, tuple[OpenStream, ErrorEvent, float]] = {}
        self.failed_batches = 0
        # When the current run of failed writes began (None: the last one succeeded).
        self._failing_since: float | None = None

    # -------------------------------------------------------- engine side

    def open(self, request_id: str) -> OpenStream:
        stream = OpenStream(self, request_id, stream_key(self.prefix, request_id))
        with self._active_lock:
            self._active[id(stream)] = stream
        return stream

    def release(self, stream: OpenStream) -> None:
        """No heartbeats for ``stream`` any more."""
        with self._active_lock:
            self._active.pop(id(stream), None)

    def put(self, stream: OpenStream, event: StreamEvent) -> None:
        raise NotImplementedError

    def open_count(self) -> int:
        return len(self._active)

    def owed_count(self) -> int:
        return len(self._owed)

    def _silent_streams(self) -> list[OpenStream]:
        assert self.heartbeat_interval_s is not None
        quiet = self.heartbeat_interval_s / 2
        now = time.monotonic()
        with self._active_lock:
            return [
                s
                for s in self._active.values()
                if not s.failed and not s.closed and now - s.last_put >= quiet
            ]

    # -------------------------------------------------------- writer side

    def encode(self, event: StreamEvent) -> dict[str, str]:
        """The fields of one entry, built just before its batch is sent."""
        return encode_event(event)

    def _append_args(self, batch: list[Entry]) -> tuple[list[str], list[str | int], list[OpenStream]]:
        """The keys and arguments of :data:`APPEND` for ``batch``, and the
        streams whose expiry it sets (each once, with its last entry)."""
        now = time.monotonic()
        encoded: list[tuple[OpenStream, dict[str, str]]] = []
        last: dict[int, int] = {}
        expiring: dict[int, OpenStream] = {}
        for stream, event in batch:
            if stream.failed:
                continue
            try:
                fields = self.encode(event)
            except Exception as exc:
                log.exception("a %s entry of stream %s could not be encoded", event.event, stream.request_id)
                self._fail([stream], _internal_error(f"an entry could not be encoded ({type(exc).__name__})"))
                continue
            last[id(stream)] = len(encoded)
            encoded.append((stream, fields))
            if is_final(event) or now >= stream.expire_due:
                expiring[id(stream)] = stream
        keys: list[str] = []
        args: list[str | int] = [self.maxlen, self.ttl_s]
        for position, (stream, fields) in enumerate(encoded):
            keys.append(stream.key)
            expire = id(stream) in expiring and last[id(stream)] == position
            args.append(len(fields))
            args.append(1 if expire else 0)
            for name, value in fields.items():
                args.append(name)
                args.append(value)
        return keys, args, list(expiring.values())

    def _sent(self, expiring: list[OpenStream]) -> None:
        self._failing_since = None
        due = time.monotonic() + self.ttl_s / 2
        for stream in expiring:
            stream.expire_due = due

    def _retry_after(self, delays: list[float]) -> float | None:
        """After a try failed: how long to sleep before the next, or None to
        give up."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if not delays or now - self._failing_since > self.retry.budget_s():
            return None
        return delays.pop(0)

    def _live(self, batch: list[Entry]) -> list[Entry]:
        return [(stream, event) for stream, event in batch if not stream.failed]

    def _give_up(self, batch: list[Entry], exc: BaseException, tries: int) -> None:
        """The batch could not be written in ``tries`` tries: its streams are
        failed, their generations stopped, and each is owed an error entry."""
        self.failed_batches += 1
        reason = describe_failure(exc)
        streams = self._streams_of(batch)
        log.error(
            "writing %d stream entries failed after %d tries (%s); stopping %d generations",
            len(batch),
            tries,
            reason,
            len(streams),
        )
        message = f"the token stream could not be written: {reason}; the generation was stopped"
        self._fail(
            streams, ErrorEvent(status=503, type="service_unavailable_error", message=message), "redis"
        )

    def _write_failed_unexpectedly(self, batch: list[Entry]) -> None:
        """The writer met an error it has no handling for (a bug): the
        batch's streams are failed, and the writer goes on with the next."""
        log.exception("the stream writer failed on a batch of %d entries", len(batch))
        self.failed_batches += 1
        self._fail(self._streams_of(batch), _internal_error("the stream writer failed"))

    @staticmethod
    def _streams_of(batch: list[Entry]) -> list[OpenStream]:
        return list({id(stream): stream for stream, _ in batch if not stream.failed}.values())

    def _fail(self, streams: list[OpenStream], error: ErrorEvent, reason: str = "internal") -> None:
        """Nothing more of ``streams`` is written: each is owed ``error`` and
        its generation is stopped. ``reason`` labels the failure metric."""
        if not streams:
            return
        worker_metrics.STREAM_WRITE_FAILURES.labels(model=self.model, reason=reason).inc(len(streams))
        give_up_at = time.monotonic() + self.ttl_s
        for stream in streams:
            stream.failed = True
            self.release(stream)
            self._owed[stream.key] = (stream, error, give_up_at)
            if self.on_failure is not None:
                try:
                    self.on_failure(stream.request_id)
                except Exception:
                    log.exception("stopping generation %s failed", stream.request_id)

    def _queue_owed(self, pipe: Any) -> list[str]:
        now = time.monotonic()
        for key, (_, _, give_up_at) in list(self._owed.items()):
            if now > give_up_at:
                del self._owed[key]
        keys = list(self._owed)
        for key in keys:
            _, error, _ = self._owed[key]
            # The stream is broken: its entries only take room a full Redis needs.
            pipe.xtrim(key, maxlen=0, approximate=False)
            pipe.xadd(key, encode_event(error), maxlen=self.maxlen, approximate=True)
            pipe.expire(key, self.ttl_s)
        return keys

    def _owed_written(self, keys: list[str], results: list[Any]) -> None:
        for i, key in enumerate(keys):
            if not isinstance(results[3 * i + 1], Exception):
                self._owed.pop(key, None)


class StreamOutbox(_Outbox):
    """The synchronous flavour: one writer thread (and one heartbeat thread).

    ``put`` queues an entry for the current step and ``flush`` hands the
    step to the writer; ``put_now`` hands one entry over at once.
    """

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        on_failure: OnFailure | None = None,
        maxlen: int = DEFAULT_MAXLEN,
        ttl_s: int = DEFAULT_TTL_S,
        retry: WriteRetry = WriteRetry(),
        heartbeat_interval_s: float | None = HEARTBEAT_INTERVAL_S,
        name: str = "stream-outbox",
        model: str = "",
    ) -> None:
        super().__init__(prefix, on_failure, maxlen, ttl_s, retry, heartbeat_interval_s, model)
        self.redis = redis
        self._append = redis.register_script(APPEND)
        self._queue: queue.SimpleQueue[list[Entry] | None] = queue.SimpleQueue()
        self._pending: list[Entry] = []
        self._pending_lock = threading.Lock()
        self._stopped = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name=name, daemon=True)
        self._writer.start()
        self._beater: threading.Thread | None = None
        if heartbeat_interval_s is not None:
            self._beater = threading.Thread(
                target=self._heartbeat_loop, name=f"{name}-heartbeat", daemon=True
            )
            self._beater.start()

    def put(self, stream: OpenStream, event: StreamEvent) -> None:
        stream.last_put = time.monotonic()
        with self._pending_lock:
            self._pending.append((stream, event))

    def put_now(self, stream: OpenStream, event: StreamEvent) -> None:
        stream.last_put = time.monotonic()
        self._queue.put([(stream, event)])

    def flush(self) -> None:
        """Hand the entries put so far to the writer thread."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        if pending:
            self._queue.put(pending)

    def close(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout)

    def _write_loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=OWED_RETRY_S if self._owed else None)
            except queue.Empty:
                self._write_owed()
                continue
            batches = [first]
            while sum(len(b or ()) for b in batches) < MAX_ENTRIES_PER_BATCH:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [entry for b in batches if b is not None for entry in b]
            try:
                self._write(batch)
            except Exception:
                self._write_failed_unexpectedly(batch)
            if self._owed:
                self._write_owed()
            if None in batches:
                return

    def _write(self, batch: list[Entry]) -> None:
        delays = self.retry.delays()
        while True:
            batch = self._live(batch)
            if not batch:
                return
            keys, args, expiring = self._append_args(batch)
            if not keys:
                return
            try:
                self._append(keys=keys, args=args)
            except Exception as exc:
                delay = self._retry_after(delays)
                if delay is None:
                    self._give_up(batch, exc, self.retry.attempts - len(delays))
                    return
                log.warning(
                    "writing %d stream entries failed (%s); retrying", len(batch), describe_failure(exc)
                )
                time.sleep(delay)
                continue
            self._sent(expiring)
            return

    def _write_owed(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        keys = self._queue_owed(pipe)
        if not keys:
            return
        try:
            results = pipe.execute(raise_on_error=False)
        except Exception:
            return
        self._owed_written(keys, results)

    def _heartbeat_loop(self) -> None:
        assert self.heartbeat_interval_s is not None
        # Silence of half the interval triggers a heartbeat, checked every
        # quarter: readers see one at least every interval, even with jitter.
        while not self._stopped.wait(self.heartbeat_interval_s / 4):
            for stream in self._silent_streams():
                self.put_now(stream, HeartbeatEvent())


class AsyncStreamOutbox(_Outbox):
    """The asyncio flavour: ``put`` from the loop's thread only; one task
    sends everything queued while the previous batch was in flight."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        on_failure: OnFailure | None = None,
        maxlen: int = DEFAULT_MAXLEN,
        ttl_s: int = DEFAULT_TTL_S,
        retry: WriteRetry = WriteRetry(),
        heartbeat_interval_s: float | None = HEARTBEAT_INTERVAL_S,
        model: str = "",
    ) -> None:
        super().__init__(prefix, on_failure, maxlen, ttl_s, retry, heartbeat_interval_s, model)
        self.redis = redis
        self._append = redis.register_script(APPEND)
        self._pending: list[Entry] = []
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the writer (and heartbeat) task on the running loop."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run(), name="stream-outbox"))
        if self.heartbeat_interval_s is not None:
            self._tasks.append(loop.create_task(self._heartbeats(), name="stream-outbox-heartbeat"))

    def put(self, stream: OpenStream, event: StreamEvent) -> None:
        stream.last_put = time.monotonic()
        self._pending.append((stream, event))
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            if self._owed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), OWED_RETRY_S)
            else:
                await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:MAX_ENTRIES_PER_BATCH]
                del self._pending[:MAX_ENTRIES_PER_BATCH]
                try:
                    await self._write(batch)
                except Exception:
                    self._write_failed_unexpectedly(batch)
            if self._owed:
                await self._write_owed()
            if not self._pending:
                self._idle.set()

    async def _write(self, batch: list[Entry]) -> None:
        delays = self.retry.delays()
        while True:
            batch = self._live(batch)
            if not batch:
                return
            keys, args, expiring = self._append_args(batch)
            if not keys:
                return
            try:
                await self._append(keys=keys, args=args)
            except Exception as exc:
                delay = self._retry_after(delays)
                if delay is None:
                    self._give_up(batch, exc, self.retry.attempts - len(delays))
                    return
                log.warning(
                    "writing %d stream entries failed (%s); retrying", len(batch), describe_failure(exc)
                )
                await asyncio.sleep(delay)
                continue
            self._sent(expiring)
            return

    async def _write_owed(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        keys = self._queue_owed(pipe)
        if not keys:
            return
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception:
            return
        self._owed_written(keys, results)

    async def _heartbeats(self) -> None:
        assert self.heartbeat_interval_s is not None
        while True:
            await asyncio.sleep(self.heartbeat_interval_s / 4)
            for stream in self._silent_streams():
                self.put(stream, HeartbeatEvent())

    async def drain(self) -> None:
        """Wait until everything queued so far is written (or given up)."""
        if self._idle is not None:
            await self._idle.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.redis.aclose()
