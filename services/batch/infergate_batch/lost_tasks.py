"""Tasks the broker lost, found by the sweeper and sent again.

Celery's Redis transport keeps a task safe once it is in the queue (a
list) or in the ``unacked`` hash, where a worker records each task it
takes until it acknowledges it; a task left there by a dead worker goes
back to the queue after the visibility timeout. It is not safe in
between: a worker killed after ``BRPOP`` took a task off the queue and
before it recorded it in ``unacked`` loses it, and so does a task that
gave up after its retries. The batch then never finishes.

So the sweeper watches each batch that is running: when its progress (the
chunks done, the lines recorded) has not moved for
``batch_lost_task_after_s``, it looks for the batch's tasks in the queue
and in ``unacked``. A task that should exist (the ``start`` of a batch not
yet cut into chunks, each chunk not yet done) and is in neither place in
two looks, one sweep apart, is lost: it is sent again. A task on its way
from the queue to ``unacked`` during both looks may run twice, which the
results tolerate (a line is written once per ``custom_id``).

Only a Redis broker is watched; other brokers keep an unacknowledged task
until it is acknowledged.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

import redis
from pydantic import BaseModel, ValidationError

from . import queue
from .objects import BatchRecord
from .settings import BatchSettings

log = logging.getLogger(__name__)

START = "start"
# Queue entries read per round trip.
PAGE = 500


def chunk_task(index: int) -> str:
    return f"chunk:{index}"


def _task_of(message: object) -> tuple[str, str] | None:
    """``(batch_id, task)`` of one of our messages in kombu's JSON form, or
    None for anything else."""
    if not isinstance(message, dict):
        return None
    try:
        name = message["headers"]["task"]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        if name == queue.START:
            return str(args[0]), START
        if name == queue.RUN_CHUNK:
            return str(args[0]), chunk_task(int(args[1]["index"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None


class BrokerView:
    """The tasks waiting in the Redis broker's queue or held unacknowledged
    by a worker, per batch."""

    def __init__(self, client: redis.Redis, settings: BatchSettings) -> None:
        self.redis = client
        prefix = queue.key_prefix(settings)
        self.queue_key = f"{prefix}{queue.QUEUE}"
        self.unacked_key = f"{prefix}{queue.UNACKED}"

    @classmethod
    def of(cls, settings: BatchSettings, default: redis.Redis) -> BrokerView | None:
        url = settings.batch_broker_url
        if not url:
            return cls(default, settings)
        if url.split("://", 1)[0] in ("redis", "rediss", "unix"):
            return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=30), settings)
        return None

    def held(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = defaultdict(set)

        def add(message: object) -> None:
            task = _task_of(message)
            if task is not None:
                found[task[0]].add(task[1])

        for raw in self._queued():
            add(_loads(raw))
        unacked = cast(list[str], self.redis.hvals(self.unacked_key))
        for raw in unacked:
            entry = _loads(raw)
            if isinstance(entry, list) and entry:
                add(entry[0])
        return found

    def _queued(self) -> Iterator[str]:
        start = 0
        while True:
            page = cast(list[str], self.redis.lrange(self.queue_key, start, start + PAGE - 1))
            yield from page
            if len(page) < PAGE:
                return
            start += PAGE


def _loads(raw: str | bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class Watch(BaseModel):
    """What the sweeper last saw of a batch, kept in Redis between sweeps
    (the sweeper may run in another worker next time)."""

    progress: str
    since: float
    # Tasks missing from the broker at the last look; None: not looked yet.
    missing: list[str] | None = None


def expected_tasks(record: BatchRecord, done: set[str]) -> set[str]:
    if not record.enqueued:
        return {START}
    return {chunk_task(i) for i in range(record.chunks) if str(i) not in done}


@dataclass
class LostTasks:
    """Per sweep: :meth:`check` each running batch, then :meth:`forget` the
    rest. ``check`` answers the tasks to send again."""

    client: redis.Redis
    key: str
    broker: BrokerView | None
    after_s: float
    _held: dict[str, set[str]] | None = None

    def check(self, record: BatchRecord, done: set[str], lines: int, now: float) -> set[str]:
        if self.broker is None:
            return set()
        batch_id = record.batch.id
        progress = f"{record.enqueued}:{len(done)}:{lines}"
        watch = self._load(batch_id)
        if watch is None or watch.progress != progress:
            self._save(batch_id, Watch(progress=progress, since=now))
            return set()
        if now - watch.since < self.after_s:
            return set()
        if self._held is None:
            self._held = self.broker.held()
        missing = expected_tasks(record, done) - self._held.get(batch_id, set())
        if missing and watch.missing is None:
            # Look once more next sweep: a task may be on its way to ``unacked``.
            self._save(batch_id, Watch(progress=progress, since=watch.since, missing=sorted(missing)))
            return set()
        lost = missing & set(watch.missing or ())
        self._save(batch_id, Watch(progress=progress, since=now))
        return lost

    def forget(self, running: Iterable[str]) -> None:
        """Drop what was kept about batches no longer running."""
        keep = set(running)
        gone = [batch_id for batch_id in cast(list[str], self.client.hkeys(self.key)) if batch_id not in keep]
        if gone:
            self.client.hdel(self.key, *gone)

    def _load(self, batch_id: str) -> Watch | None:
        raw = cast(str | None, self.client.hget(self.key, batch_id))
        if not raw:
            return None
        try:
            return Watch.model_validate_json(raw)
        except ValidationError:
            return None  # written by another version: start watching again

    def _save(self, batch_id: str, watch: Watch) -> None:
        self.client.hset(self.key, batch_id, watch.model_dump_json())
