"""From a resolved model to a worker: replica choice, in-flight accounting,
a second replica when the first cannot be reached, and token streams.

:class:`StreamGroup` holds the token streams of one client request (one per
prompt of a batched completion) read from one queue, enforces the heartbeat
deadline and, when closed before the end, cancels what is still running.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from infergate_common.errors import ServiceUnavailable
from infergate_common.registry_api import ModelRecord
from infergate_common.streams import ErrorEvent, is_final, stream_key
from infergate_common.worker_api import GenerateRequest

from .replica_choice import InFlight
from .stream_reader import Entry, StreamReader, Subscription
from .worker_client import WorkerClient, WorkerUnreachable

T = TypeVar("T")


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
            # An error the router made (``local``) did not end the worker's
            # generation: the stream stays unfinished, so close() cancels it.
            if is_final(entry.event) and not entry.local:
                stream_.finished = True
                self._release(stream_)
            yield stream_.position, entry
            if isinstance(entry.event, ErrorEvent):
                return

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
    ) -> None:
        self.inflight = inflight
        self.workers = workers
        self.reader = reader
        self.prefix = stream_prefix
        self.deadline_s = heartbeat_deadline_s

    def call(self, model: ModelRecord, send: Callable[[str], T]) -> T:
        """``send(replica_url)`` on the least busy ready replica; a replica
        that refuses the connection is skipped for the next one."""
        tried: set[str] = set()
        while True:
            replica = self.inflight.choose(model, exclude=tried)
            with self.inflight.held(replica.url):
                try:
                    return send(replica.url)
                except WorkerUnreachable as exc:
                    tried.add(replica.url)
                    if all(r.url in tried for r in model.replicas if r.ready):
                        raise ServiceUnavailable(
                            f"no replica of model {model.name} could be reached: {exc.message}"
                        ) from exc

    def stream_group(self) -> StreamGroup:
        return StreamGroup(self, self.deadline_s)

    def note_key(self, request_id: str) -> str:
        return f"{self.prefix}:streamnote:{request_id}"

    def open_stream(
        self, group: StreamGroup, model: ModelRecord, request: GenerateRequest, note: str | None = None
    ) -> None:
        """Subscribe to the request's stream (503 when Redis is down), then
        start the generation on a replica, which stays counted in flight
        until the stream ends. ``note`` is kept beside the stream for
        clients that come back for it later."""
        key = stream_key(self.prefix, request.request_id)
        stored = (self.note_key(request.request_id), note) if note is not None else None
        subscription = self.reader.subscribe(key, shared=group.queue, note=stored)
        tried: set[str] = set()
        try:
            while True:
                replica = self.inflight.choose(model, exclude=tried)
                self.inflight.acquire(replica.url)
                try:
                    accepted = self.workers.start_stream(replica.url, request)
                except WorkerUnreachable as exc:
                    self.inflight.release(replica.url)
                    tried.add(replica.url)
                    if all(r.url in tried for r in model.replicas if r.ready):
                        raise ServiceUnavailable(
                            f"no replica of model {model.name} could be reached: {exc.message}"
                        ) from exc
                    continue
                except Exception:
                    self.inflight.release(replica.url)
                    raise
                break
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
