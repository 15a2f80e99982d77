"""From a resolved model to a worker: replica choice, in-flight accounting,
another replica when the first cannot be reached or is full, a bounded wait
when every replica is full, and token streams.

:class:`StreamGroup` holds the token streams of one client request (one per
prompt of a batched completion) read from one queue, enforces the heartbeat
deadline and, when closed before the end, cancels what is still running.

A generation the worker stopped on its own (``finish_reason`` "abort": the
worker is draining) reaches the client as an error, never as a normal end:
a streamed one as an error event, a plain one as a 503 with Retry-After.

This module never imports Flask: the batch worker uses it as a library.
"""

from __future__ import annotations

import queue
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from infergate_common.errors import ClientClosedRequest, GatewayTimeout, Overloaded, ServiceUnavailable
from infergate_common.registry_api import ModelRecord, ReplicaRecord
from infergate_common.streams import DoneEvent, ErrorEvent, is_final, stream_key
from infergate_common.worker_api import GenerateRequest, GenerateResponse, StreamAccepted

from .replica_choice import InFlight
from .stream_reader import Entry, StreamReader, Subscription
from .worker_client import WorkerClient, WorkerUnreachable

T = TypeVar("T")

ABORTED_BY_WORKER = (
    "the worker stopped this generation before it ended (it is shutting down); retry the request"
)


class ClientWatch(Protocol):
    """Calls ``on_gone`` if the client disconnects while a call runs; the
    returned function stops watching. ``gone()`` checks without waiting."""

    def __call__(self, on_gone: Callable[[], None]) -> Callable[[], None]: ...

    def gone(self) -> bool: ...


@dataclass(eq=False)
class OpenStream:
    position: int
    request_id: str
    subscription: Subscription
    # None for a resumed stream: its replica is not known here.
    replica: str | None
    finished: bool = False


class StreamGroup:
    def __init__(self, dispatcher: Dispatcher, deadline_s: float) -> None:
        self.dispatcher = dispatcher
        self.deadline_s = deadline_s
        self.queue: queue.Queue[Entry] = queue.Queue()
        self.streams: dict[str, OpenStream] = {}
        self.closed = False

    def add(self, stream: OpenStream) -> None:
        self.streams[stream.subscription.key] = stream

    def entries(self) -> Iterator[tuple[int, Entry]]:
        """``(prompt position, entry)`` until every stream has ended or one
        failed; heartbeats are yielded too, so a caller can keep the client
        connection alive (and notice when it is gone)."""
        while any(not s.finished for s in self.streams.values()):
            try:
                entry = self.queue.get(timeout=self.deadline_s)
            except queue.Empty:
                stream = next(s for s in self.streams.values() if not s.finished)
                message = f"the worker sent nothing for {self.deadline_s:g}s; the generation was stopped"
                event = ErrorEvent(status=504, type="timeout_error", message=message)
                yield stream.position, Entry(stream.subscription.key, stream.subscription.last_id, event)
                return
            stream_ = self.streams.get(entry.key)
            if stream_ is None:
                continue
            if isinstance(entry.event, DoneEvent) and "abort" in entry.event.finish_reasons.values():
                entry = Entry(
                    entry.key,
                    entry.id,
                    ErrorEvent(status=503, type="service_unavailable_error", message=ABORTED_BY_WORKER),
                )
            # An error the router made (``local``) did not end the worker's
            # generation: the stream stays unfinished, so close() cancels it.
            if is_final(entry.event) and not entry.local:
                stream_.finished = True
                self._release(stream_)
            yield stream_.position, entry
            if isinstance(entry.event, ErrorEvent):
                return

    def abort(self, message: str, status: int = 503) -> None:
        """End the client's stream with an error event now (from any
        greenlet); reading stops and unfinished generations are cancelled
        when the response closes."""
        stream = next((s for s in self.streams.values() if not s.finished), None)
        if stream is None:
            return
        event = ErrorEvent(status=status, type="service_unavailable_error", message=message)
        self.queue.put(Entry(stream.subscription.key, stream.subscription.last_id, event, local=True))

    def abandon(self) -> None:
        """The client is gone (called from the greenlet that watches its
        socket): free the replicas and cancel the generations now, and wake
        the reader so the response ends."""
        self.abort("the client disconnected", status=499)
        self.close()

    def _release(self, stream: OpenStream) -> None:
        self.dispatcher.reader.unsubscribe(stream.subscription)
        if stream.replica is not None:
            self.dispatcher.inflight.release(stream.replica)
            stream.replica = None

    def close(self) -> None:
        """Stop reading; cancel every generation that has not ended."""
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            replica = stream.replica
            self._release(stream)
            if not stream.finished and replica is not None:
                self.dispatcher.workers.cancel_later(replica, stream.request_id)


class Dispatcher:
    def __init__(
        self,
        inflight: InFlight,
        workers: WorkerClient,
        reader: StreamReader,
        stream_prefix: str,
        heartbeat_deadline_s: float,
        queue_wait_s: float = 1.0,
    ) -> None:
        self.inflight = inflight
        self.workers = workers
        self.reader = reader
        self.prefix = stream_prefix
        self.deadline_s = heartbeat_deadline_s
        self.queue_wait_s = queue_wait_s
        self.open_groups: weakref.WeakSet[StreamGroup] = weakref.WeakSet()

    def _place(self, model: ModelRecord, send: Callable[[str], T]) -> tuple[ReplicaRecord, T]:
        """``send(replica_url)`` on the least busy ready replica with room,
        counted in flight from then on (the caller releases it). A replica
        that refuses the connection or answers that it is full is skipped
        for the next; when every one is full, wait up to ``queue_wait_s``
        for room, then :class:`Overloaded`."""
        deadline = time.monotonic() + self.queue_wait_s
        tried: set[str] = set()
        while True:
            try:
                replica = self.inflight.choose(model, exclude=tried)
            except Overloaded:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded(
                        f"Model {model.name} is at capacity: every replica is busy; retry shortly."
                    ) from None
                self.inflight.wait_for_room(min(left, 0.1))
                tried.clear()
                continue
            self.inflight.acquire(replica.url)
            try:
                return replica, send(replica.url)
            except WorkerUnreachable as exc:
                self.inflight.release(replica.url)
                tried.add(replica.url)
                if all(r.url in tried for r in model.replicas if r.ready):
                    raise ServiceUnavailable(
                        f"no replica of model {model.name} could be reached: {exc.message}"
                    ) from exc
            except Overloaded:
                self.inflight.release(replica.url)
                self.inflight.mark_full(replica.url)
                tried.add(replica.url)
            except BaseException:
                self.inflight.release(replica.url)
                raise

    def call(self, model: ModelRecord, send: Callable[[str], T]) -> T:
        """``send(replica_url)`` on a replica chosen by :meth:`_place`."""
        replica, result = self._place(model, send)
        self.inflight.release(replica.url)
        return result

    def generate(
        self, model: ModelRecord, request: GenerateRequest, watch: ClientWatch | None = None
    ) -> GenerateResponse:
        """A non-streaming generation, cancelled on the worker when the
        client disconnects (``watch``) or the worker does not answer in time."""

        def send(url: str) -> GenerateResponse:
            if watch is not None and watch.gone():
                raise ClientClosedRequest("the client disconnected before its request was sent to a worker")
            stop = watch(lambda: self.workers.cancel_later(url, request.request_id)) if watch else None
            try:
                return self.workers.generate(url, request)
            except GatewayTimeout:
                self.workers.cancel_later(url, request.request_id)
                raise
            finally:
                if stop is not None:
                    stop()

        response = self.call(model, send)
        if any(choice.finish_reason == "abort" for choice in response.choices):
            error = ServiceUnavailable(ABORTED_BY_WORKER)
            error.retry_after_s = 1.0
            raise error
        return response

    def stream_group(self) -> StreamGroup:
        group = StreamGroup(self, self.deadline_s)
        self.open_groups.add(group)
        return group

    def abort_open_streams(self, message: str) -> int:
        """End every open stream of this process with an error event."""
        groups = [group for group in list(self.open_groups) if not group.closed]
        for group in groups:
            group.abort(message)
        return len(groups)

    def note_key(self, request_id: str) -> str:
        return f"{self.prefix}:streamnote:{request_id}"

    def open_stream(
        self,
        group: StreamGroup,
        model: ModelRecord,
        request: GenerateRequest,
        note: str | None = None,
        watch: ClientWatch | None = None,
    ) -> None:
        """Subscribe to the request's stream (503 when Redis is down), then
        start the generation on a replica, which stays counted in flight
        until the stream ends. ``note`` is kept beside the stream for
        clients that come back for it later. A client gone (``watch``) by
        the time a replica has room gets nothing started: a slot freed by
        one abandoned stream must not go to another."""
        key = stream_key(self.prefix, request.request_id)
        stored = (self.note_key(request.request_id), note) if note is not None else None
        subscription = self.reader.subscribe(key, shared=group.queue, note=stored)

        def start(url: str) -> StreamAccepted:
            if watch is not None and watch.gone():
                raise ClientClosedRequest("the client disconnected before its stream was started")
            return self.workers.start_stream(url, request)

        try:
            replica, accepted = self._place(model, start)
        except Exception:
            self.reader.unsubscribe(subscription)
            raise
        if accepted.stream_key != key:
            # A worker configured with another prefix: follow the key it names.
            self.reader.unsubscribe(subscription)
            subscription = self.reader.subscribe(accepted.stream_key, shared=group.queue)
        group.add(OpenStream(len(group.streams), request.request_id, subscription, replica.url))

    def resume_stream(self, group: StreamGroup, request_id: str, last_id: str) -> None:
        key = stream_key(self.prefix, request_id)
        subscription = self.reader.subscribe(key, last_id=last_id, shared=group.queue)
        group.add(OpenStream(len(group.streams), request_id, subscription, None))
