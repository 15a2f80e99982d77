"""One multiplexed Redis reader per router process.

Every active token stream of the process is read by a single ``XREAD
BLOCK`` over all of their keys; each entry is handed to the queue of the
request that subscribed to it, so a thousand open streams cost one Redis
connection, not a thousand. The reader remembers the last entry id of every
stream, so nothing is read twice and nothing is skipped.

A subscriber's first entries may already be in Redis when it subscribes
(the worker starts writing as soon as it has admitted the request): reading
starts from the id it gives (``0-0`` by default, or a ``Last-Event-ID``).
To pick a new subscription up at once rather than after the current
``XREAD`` times out, the reader also watches a private "wake" stream that
:meth:`StreamReader.subscribe` writes to; that write doubles as the check
that Redis is reachable before a request is dispatched.

Each subscription checks the integrity of its stream (the rules are in
:mod:`infergate_common.streams`): deltas are numbered, a repeated one is
dropped, and one that skips ahead, or a ``done`` that counts more deltas
than arrived, ends the subscription with an error entry instead of relaying
text with a hole. A resumed subscription learns the number of the delta its
``Last-Event-ID`` names before reading on.

Errors this reader makes itself (Redis lost, a hole) are marked ``local``:
the worker never ended that stream, so closing the request cancels it.

Under gunicorn's gevent worker ``threading`` and ``queue`` are patched: the
reader is a greenlet and the queues are cooperative.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from infergate_common.errors import NotFound, ServiceUnavailable
from infergate_common.streams import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    StreamEvent,
    decode_event,
    decode_fields,
)

from . import redis_connections

log = logging.getLogger(__name__)

WAKE_TTL_S = 600
# Longer than the workers' stream expiry (streams.DEFAULT_TTL_S).
NOTE_TTL_S = 900
# Connections for subscribing and resuming (one short round trip each); a
# burst of new streams on a busy process waits for one, never fails at once.
COMMAND_CONNECTIONS = 128
READ_COUNT = 512


@dataclass(frozen=True)
class Entry:
    """One stream entry: the stream it came from, its id, its event;
    ``local`` when the router made it (the worker did not end the stream)."""

    key: str
    id: str
    event: StreamEvent
    local: bool = False


def _lost(message: str) -> ErrorEvent:
    return ErrorEvent(status=502, type="upstream_error", message=f"{message}; the generation was stopped")


@dataclass(eq=False)
class Subscription:
    key: str
    last_id: str
    queue: queue.Queue[Entry] = field(default_factory=queue.Queue)
    # The seq of the next delta to relay.
    next_seq: int = 0
    # A hole was found: nothing more is delivered.
    broken: bool = False
    # ``last_id`` as numbers, for ordering.
    last_order: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.last_order = _id_order(self.last_id)

    def admit(self, event: StreamEvent) -> tuple[StreamEvent | None, bool]:
        """What to deliver for ``event`` (None: nothing) and whether the
        router made it, after the integrity rules."""
        if self.broken:
            return None, False
        if isinstance(event, DeltaEvent):
            if event.seq < self.next_seq:
                return None, False  # a retried write that landed twice
            if event.seq > self.next_seq:
                self.broken = True
                return _lost(
                    f"the token stream lost entries: delta {self.next_seq} missing, {event.seq} came"
                ), True
            self.next_seq += 1
        elif isinstance(event, DoneEvent) and event.deltas != self.next_seq:
            self.broken = True
            return _lost(
                f"the token stream lost entries: {event.deltas} deltas written, {self.next_seq} read"
            ), True
        return event, False


def _id_order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _unavailable(exc: BaseException) -> ServiceUnavailable:
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return ServiceUnavailable("token stream store (Redis) is full (maxmemory reached)")
    if isinstance(exc, redis.exceptions.ConnectionError) and isinstance(exc.__context__, queue.Empty):
        # The blocking pool found no free connection in time.
        return ServiceUnavailable("token stream store (Redis) busy: every connection of this router in use")
    return ServiceUnavailable(f"token stream store (Redis) unreachable: {type(exc).__name__}")


class StreamReader:
    def __init__(self, redis_url: str, prefix: str, block_ms: int, connect_timeout_s: float) -> None:
        self.redis_url = redis_url
        self.block_ms = block_ms
        self.connect_timeout_s = connect_timeout_s
        self.wake_key = f"{prefix}:router:wake:{uuid.uuid4().hex}"
        self._subs: dict[str, list[Subscription]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False
        self._commands: redis.Redis | None = None

    # ------------------------------------------------------------ requests

    def _command_client(self) -> redis.Redis:
        if self._commands is None:
            # A blocking pool: a burst of new streams waits for a connection
            # instead of failing when the pool is exhausted.
            pool = redis_connections.blocking_pool(
                self.redis_url,
                max_connections=COMMAND_CONNECTIONS,
                timeout=self.connect_timeout_s + 2,
                socket_connect_timeout=self.connect_timeout_s,
                socket_timeout=self.connect_timeout_s + 2,
            )
            self._commands = redis.Redis(connection_pool=pool)
        return self._commands

    def subscribe(
        self,
        key: str,
        last_id: str = "0-0",
        shared: queue.Queue[Entry] | None = None,
        note: tuple[str, str] | None = None,
    ) -> Subscription:
        """Start delivering ``key``'s entries after ``last_id``; raises
        :class:`ServiceUnavailable` when Redis cannot be reached. ``note``
        (a key and a value) is stored in the same round trip, expiring with
        the stream: what a later reader needs to make sense of it. A
        ``last_id`` other than ``0-0`` must name an entry of the stream
        (:class:`NotFound` otherwise): reading resumes after it."""
        self._ensure_started()
        sub = Subscription(key, last_id) if shared is None else Subscription(key, last_id, shared)
        if last_id != "0-0":
            sub.next_seq = self._seq_after(key, last_id)
        with self._lock:
            self._subs.setdefault(key, []).append(sub)
        try:
            pipe = self._command_client().pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.expire(self.wake_key, WAKE_TTL_S)
            if note is not None:
                pipe.set(note[0], note[1], ex=NOTE_TTL_S)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self.unsubscribe(sub)
            raise _unavailable(exc) from exc
        return sub

    def _seq_after(self, key: str, last_id: str) -> int:
        """The seq of the delta that follows entry ``last_id``."""
        try:
            found = self._command_client().xrange(key, last_id, last_id)
        except (redis.RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        event: StreamEvent | None = None
        if found:
            try:
                event = decode_event(found[0][1])  # type: ignore[index]
            except ValueError:
                event = None
        if isinstance(event, DeltaEvent):
            return event.seq + 1
        if isinstance(event, DoneEvent):
            return event.deltas
        raise NotFound(f"Last-Event-ID {last_id} names no token of this stream (expired, or never sent)")

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.key, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._subs.pop(sub.key, None)

    def active(self) -> int:
        return len(self._subs)

    def read_note(self, key: str) -> str | None:
        try:
            value = self._command_client().get(key)
        except (redis.RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return value.decode() if isinstance(value, bytes) else value

    def exists(self, key: str) -> bool:
        try:
            return bool(self._command_client().exists(key))
        except (redis.RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    # -------------------------------------------------------------- reader

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._lock:
            if not self._started:
                threading.Thread(target=self._run, name="stream-reader", daemon=True).start()
                self._started = True

    def stop(self) -> None:
        self._stop.set()

    def _fail_all(self, message: str) -> None:
        with self._lock:
            subs = [sub for group in self._subs.values() for sub in group]
            self._subs.clear()
        for sub in subs:
            event = ErrorEvent(status=503, type="service_unavailable_error", message=message)
            sub.queue.put(Entry(sub.key, sub.last_id, event, local=True))

    def _run(self) -> None:
        client: redis.Redis | None = None
        wake_last = "0-0"
        failed = False
        while not self._stop.is_set():
            try:
                if client is None:
                    client = self._raw_client()
                wake_last = self._read_once(client, wake_last)
                if failed:
                    log.info("stream reader reconnected to Redis")
                    failed = False
            except Exception as exc:
                # Whatever went wrong, the reader must survive it: the open
                # streams are failed (their clients get an error event) and
                # reading starts again on a fresh connection.
                if isinstance(exc, (redis.RedisError, OSError)):
                    if not failed:
                        log.warning("stream reader lost Redis: %s", exc)
                else:
                    log.exception("stream reader failed")
                failed = True
                self._fail_all("token stream store (Redis) became unreachable")
                if client is not None:
                    client.close()
                client = None
                wake_last = "0-0"
                self._stop.wait(0.2)
        if client is not None:
            client.close()

    def _raw_client(self) -> redis.Redis:
        """The reader's own connection, RESP2, with XREAD's reply left as
        redis-py reads it (nested lists): building a dict per entry was a
        tenth of the relay's CPU."""
        client = redis_connections.client(
            self.redis_url,
            socket_connect_timeout=self.connect_timeout_s,
            socket_timeout=self.block_ms / 1000 + self.connect_timeout_s + 2,
            protocol=2,
        )
        client.set_response_callback("XREAD", lambda reply, **_: reply)
        return client

    def _read_once(self, client: redis.Redis, wake_last: str) -> str:
        """One ``XREAD`` over every open stream; returns the wake stream's last id."""
        with self._lock:
            streams = {
                key: min(group, key=lambda sub: sub.last_order).last_id for key, group in self._subs.items()
            }
        streams[self.wake_key] = wake_last
        # The raw reply (see _raw_client): [[key, [[id, [field, value, ...]], ...]], ...].
        reply: Any = client.execute_command(
            "XREAD", "COUNT", READ_COUNT, "BLOCK", self.block_ms, "STREAMS", *streams, *streams.values()
        )
        for raw_key, entries in reply or ():
            key = _text(raw_key)
            if key == self.wake_key:
                if entries:
                    wake_last = _text(entries[-1][0])
                continue
            with self._lock:
                group = list(self._subs.get(key, ()))
            for raw_id, fields in entries:
                entry_id = _text(raw_id)
                order = _id_order(entry_id)
                try:
                    event: StreamEvent = decode_fields(fields)
                except ValueError as exc:
                    event = ErrorEvent(message=f"undecodable stream entry: {exc}")
                for sub in group:
                    if order > sub.last_order:
                        sub.last_id, sub.last_order = entry_id, order
                        delivered, local = sub.admit(event)
                        if delivered is not None:
                            sub.queue.put(Entry(key, entry_id, delivered, local))
        return wake_last
