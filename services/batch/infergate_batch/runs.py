"""What the Celery tasks do: start a batch, run a chunk of its lines,
finalize it, and sweep for batches past their window.

A batch moves ``validating -> in_progress -> finalizing -> completed``;
``cancelling -> cancelled`` after a cancel, ``expired`` when its window
ends first, ``failed`` when its input cannot be read. Every step can run
twice (a redelivered task) and gives the same result:

* ``start`` cuts the input file into chunks of ``batch_chunk_lines`` lines
  (by byte range, so a chunk task carries no data) and sends them; a start
  that runs again sends the chunks not yet run.
* ``run_chunk`` runs the lines that have no result yet, records each once,
  then marks the chunk done; the chunk that completes the set finalizes.
  Pending lines of a cancelled or expired batch are skipped; lines already
  running finish.
* ``finalize`` (one at a time per batch, under a lock) writes the output
  and error files in input order from the recorded results, with
  ``batch_expired`` error lines for what an expired batch never ran, then
  sets the final status and counts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

import redis
from celery import Celery

from infergate_common.errors import InfergateError, NotFound
from infergate_router.services import RouterServices
from infergate_router.settings import RouterSettings
from infergate_router.settings import settings_from_env as router_settings_from_env

from . import queue
from .lines import LineRunner, Skipped
from .lost_tasks import START, BrokerView, LostTasks, chunk_task
from .objects import (
    BatchError,
    BatchErrors,
    BatchRecord,
    BatchStatus,
    Chunk,
    FileObject,
    FileRecord,
    LineError,
    OutputLine,
    RequestCounts,
    storage_key,
)
from .settings import BatchSettings
from .slots import ModelSlots
from .storage import FileStorage, open_storage
from .store import BatchStore

log = logging.getLogger(__name__)

# Results read from Redis per round trip while the output files are written.
FINALIZE_PAGE = 500
# A finalize that has not finished within this long is taken over.
FINALIZE_LOCK_S = 600
# How long a chunk trusts its last look at the batch's status.
STATUS_TTL_S = 0.5


@dataclass
class BatchParts:
    """The per-process parts of a batch worker, built on first use (after
    Celery's pool forks), as the router builds its own."""

    settings: BatchSettings
    celery: Celery
    redis: redis.Redis
    store: BatchStore
    storage: FileStorage
    router: RouterServices
    runner: LineRunner
    broker: BrokerView | None

    @classmethod
    def build(
        cls, settings: BatchSettings, celery: Celery, router_settings: RouterSettings | None = None
    ) -> BatchParts:
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=30)
        router = RouterServices.build(router_settings or router_settings_from_env())
        slots = ModelSlots(client, settings.stream_prefix, settings, settings.batch_slot_lease_s)
        return cls(
            settings,
            celery,
            client,
            BatchStore(client, settings.stream_prefix),
            open_storage(settings),
            router,
            LineRunner(router, slots, settings),
            BrokerView.of(settings, client),
        )


# ------------------------------------------------------------------ start


def chunks_of(storage: FileStorage, key: str, size: int) -> Iterator[Chunk]:
    index, first, count, start, end = 0, 1, 0, 0, 0
    for offset, line in storage.lines(key):
        if count == size:
            yield Chunk(index=index, first_line=first, count=count, start=start, end=offset)
            index, first, count, start = index + 1, first + count, 0, offset
        count += 1
        end = offset + len(line)
    if count:
        yield Chunk(index=index, first_line=first, count=count, start=start, end=end)


def start(parts: BatchParts, batch_id: str) -> None:
    record = parts.store.get_batch(batch_id)
    status = record.batch.status
    if status.terminal or record.enqueued:
        return
    try:
        input_file = parts.store.get_file(record.batch.input_file_id, record.owner)
        chunks = list(chunks_of(parts.storage, input_file.key, parts.settings.batch_chunk_lines))
    except (NotFound, OSError) as exc:
        message = exc.message if isinstance(exc, InfergateError) else f"the input file cannot be read: {exc}"
        _fail(parts, batch_id, "invalid_input_file", message)
        return
    total = sum(chunk.count for chunk in chunks)

    def begin(rec: BatchRecord) -> bool:
        rec.chunks = len(chunks)
        rec.chunk_lines = parts.settings.batch_chunk_lines
        rec.batch.request_counts = RequestCounts(total=total)
        if rec.batch.status == BatchStatus.VALIDATING:
            rec.batch.status = BatchStatus.IN_PROGRESS
            rec.batch.in_progress_at = int(time.time())
        return True

    parts.store.update_batch(batch_id, begin)
    # A cancelled batch's chunks are sent too: they skip their lines at once.
    done = parts.store.done_chunks(batch_id)
    for chunk in chunks:
        if str(chunk.index) not in done:
            queue.send(parts.celery, queue.RUN_CHUNK, batch_id, chunk.model_dump())

    def sent(rec: BatchRecord) -> bool:
        rec.enqueued = True
        return True

    parts.store.update_batch(batch_id, sent)


def _fail(parts: BatchParts, batch_id: str, code: str, message: str) -> None:
    def fail(rec: BatchRecord) -> bool:
        if rec.batch.status.terminal:
            return False
        rec.batch.status = BatchStatus.FAILED
        rec.batch.failed_at = int(time.time())
        rec.batch.errors = BatchErrors(data=[BatchError(code=code, message=message)])
        return True

    parts.store.update_batch(batch_id, fail)


# ------------------------------------------------------------------ chunks


@dataclass
class StatusView:
    """Whether a batch's pending lines should still start, looked up at most
    every ``STATUS_TTL_S``."""

    store: BatchStore
    batch_id: str
    checked_at: float = 0.0
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> bool:
        with self.lock:
            if self.stopped or time.monotonic() - self.checked_at < STATUS_TTL_S:
                return self.stopped
            self.checked_at = time.monotonic()
            try:
                record = self.store.get_batch(self.batch_id)
            except NotFound:
                self.stopped = True
                return True
            batch = record.batch
            self.stopped = (
                batch.status.terminal
                or batch.status == BatchStatus.CANCELLING
                or record.expire
                or (batch.expires_at is not None and time.time() >= batch.expires_at)
            )
            return self.stopped


def run_chunk(parts: BatchParts, batch_id: str, chunk: Chunk) -> None:
    try:
        record = parts.store.get_batch(batch_id)
    except NotFound:
        return
    stop = StatusView(parts.store, batch_id)
    if not stop():
        input_key = storage_key(record.batch.input_file_id)
        data = parts.storage.read_range(input_key, chunk.start, chunk.end)
        lines = data.splitlines(keepends=True)
        endpoint = record.batch.endpoint

        def run_one(number: int, raw: bytes) -> None:
            if stop():
                return
            try:
                custom_id, line = parts.runner.run(batch_id, endpoint, number, raw, stop)
            except Skipped:
                return
            failed = line.response is None or line.response.status_code != 200
            parts.store.put_line(batch_id, custom_id, line.model_dump_json(), failed)

        pending = [
            (chunk.first_line + i, raw)
            for i, raw in enumerate(lines)
            if not parts.store.has_line(batch_id, json.loads(raw)["custom_id"])
        ]
        with ThreadPoolExecutor(min(len(pending) or 1, parts.settings.batch_chunk_threads)) as pool:
            for future in [pool.submit(run_one, number, raw) for number, raw in pending]:
                future.result()
    if parts.store.chunk_done(batch_id, chunk.index) >= record.chunks:
        finalize(parts, batch_id)


# ---------------------------------------------------------------- finalize


def _write_results(
    parts: BatchParts, record: BatchRecord, end: BatchStatus, out: IO[bytes], err: IO[bytes]
) -> tuple[int, int]:
    """Output and error lines in input order; ``(completed, failed)``."""
    batch = record.batch
    completed = failed = 0

    def flush(custom_ids: list[str]) -> None:
        nonlocal completed, failed
        for custom_id, (ok, error) in zip(
            custom_ids, parts.store.lines_of(batch.id, custom_ids), strict=True
        ):
            if ok is not None:
                out.write(ok.encode() + b"\n")
                completed += 1
            elif error is not None:
                err.write(error.encode() + b"\n")
                failed += 1
            elif end == BatchStatus.EXPIRED:
                line = OutputLine(
                    id=f"batch_req_{batch.id}_{custom_id}"[:200],
                    custom_id=custom_id,
                    error=LineError(
                        code="batch_expired",
                        message="This request could not be executed before the completion window expired.",
                    ),
                )
                err.write(line.model_dump_json().encode() + b"\n")
                failed += 1
            elif end == BatchStatus.COMPLETED:
                # Every chunk ran: a line without a result is a bug, never hidden.
                log.error("batch %s: line %s has no result", batch.id, custom_id)

    page: list[str] = []
    for _, raw in parts.storage.lines(storage_key(batch.input_file_id)):
        page.append(json.loads(raw)["custom_id"])
        if len(page) == FINALIZE_PAGE:
            flush(page)
            page = []
    flush(page)
    return completed, failed


def _end_status(record: BatchRecord, chunks_done: int, lines_done: int) -> BatchStatus | None:
    """The status a finalize ends in now, or None when the batch is not
    ready: a cancelled batch waits for its running lines (its pending ones
    are skipped fast), an expired one does not. Chunks that skipped their
    lines because the window ended do not make a batch completed."""
    batch = record.batch
    cancelling = batch.status == BatchStatus.CANCELLING
    past_window = record.expire or (batch.expires_at is not None and time.time() >= batch.expires_at)
    if record.chunks and chunks_done >= record.chunks:
        if cancelling:
            return BatchStatus.CANCELLED
        if past_window and lines_done < batch.request_counts.total:
            return BatchStatus.EXPIRED
        return BatchStatus.COMPLETED
    if past_window:
        return BatchStatus.CANCELLED if cancelling else BatchStatus.EXPIRED
    return None


def finalize(parts: BatchParts, batch_id: str) -> None:
    store = parts.store
    if not store.finalize_lock(batch_id, FINALIZE_LOCK_S):
        return
    try:
        record = store.get_batch(batch_id)
        if record.batch.status.terminal:
            return
        end = _end_status(record, store.chunks_done(batch_id), sum(store.counts(batch_id)))
        if end is None:
            return
        if end == BatchStatus.COMPLETED:

            def finalizing(rec: BatchRecord) -> bool:
                rec.batch.status = BatchStatus.FINALIZING
                rec.batch.finalizing_at = rec.batch.finalizing_at or int(time.time())
                return True

            record = store.update_batch(batch_id, finalizing)
        files = _write_files(parts, record, end)
        completed, failed = files.counts
        now = int(time.time())

        def finish(rec: BatchRecord) -> bool:
            if rec.batch.status.terminal:
                return False
            final = BatchStatus.CANCELLED if rec.batch.status == BatchStatus.CANCELLING else end
            rec.batch.status = final
            setattr(rec.batch, f"{final.value}_at", now)
            rec.batch.output_file_id = files.output_id
            rec.batch.error_file_id = files.error_id
            rec.batch.request_counts = RequestCounts(
                total=rec.batch.request_counts.total, completed=completed, failed=failed
            )
            return True

        store.update_batch(batch_id, finish)
        store.expire_results(batch_id)
        log.info("batch %s %s: %d completed, %d failed", batch_id, end.value, completed, failed)
    finally:
        store.finalize_unlock(batch_id)


@dataclass
class WrittenFiles:
    output_id: str | None
    error_id: str | None
    counts: tuple[int, int]


def _write_files(parts: BatchParts, record: BatchRecord, end: BatchStatus) -> WrittenFiles:
    """Both files under ids derived from the batch's, so a finalize that runs
    again rewrites them instead of adding new ones."""
    batch_id = record.batch.id
    ids = {"output": f"file-{batch_id}-output", "error": f"file-{batch_id}-errors"}
    with (
        parts.storage.writer(storage_key(ids["output"])) as out,
        parts.storage.writer(storage_key(ids["error"])) as err,
    ):
        counts = _write_results(parts, record, end, out, err)
        sizes = {"output": out.tell(), "error": err.tell()}
    kept: dict[str, str | None] = {}
    for kind, count in zip(("output", "error"), counts, strict=True):
        if count == 0:
            parts.storage.delete(storage_key(ids[kind]))
            kept[kind] = None
            continue
        file = FileObject(
            id=ids[kind],
            bytes=sizes[kind],
            created_at=int(time.time()),
            filename=f"{batch_id}_{kind}.jsonl",
            purpose="batch_output",
        )
        parts.store.add_file(FileRecord(file=file, owner=record.owner, lines=count))
        kept[kind] = ids[kind]
    return WrittenFiles(kept["output"], kept["error"], counts)


# ------------------------------------------------------------------- sweep


def sweep(parts: BatchParts) -> None:
    """Finalize batches past their window, and batches whose chunks have all
    run but whose finalize never finished (its worker died); send again the
    tasks the broker lost (:mod:`infergate_batch.lost_tasks`)."""
    store = parts.store
    now = time.time()
    after_s = parts.settings.batch_lost_task_after_s
    lost = LostTasks(store.redis, f"{store.prefix}:watch", parts.broker, after_s)
    running: list[str] = []
    for batch_id in store.active_batches():
        try:
            record = store.get_batch(batch_id)
        except NotFound:
            continue
        batch = record.batch
        if batch.status.terminal:
            continue
        if batch.expires_at is not None and now >= batch.expires_at and not record.expire:

            def expire(rec: BatchRecord) -> bool:
                rec.expire = True
                return True

            store.update_batch(batch_id, expire)
            queue.send(parts.celery, queue.FINALIZE, batch_id)
        elif record.chunks and store.chunks_done(batch_id) >= record.chunks:
            queue.send(parts.celery, queue.FINALIZE, batch_id)
        elif not record.expire:
            running.append(batch_id)
            try:
                lines = sum(store.counts(batch_id))
                _send_again(parts, record, lost.check(record, store.done_chunks(batch_id), lines, now))
            except Exception:
                # One batch's input gone from the storage must not stop the sweep for the others.
                log.exception("batch %s: looking for its lost tasks failed", batch_id)
    lost.forget(running)


def _send_again(parts: BatchParts, record: BatchRecord, tasks: set[str]) -> None:
    if not tasks:
        return
    batch_id = record.batch.id
    log.warning("batch %s: the broker lost %s; sending again", batch_id, ", ".join(sorted(tasks)))
    if START in tasks:
        queue.send(parts.celery, queue.START, batch_id)
        return
    size = record.chunk_lines or parts.settings.batch_chunk_lines
    for chunk in chunks_of(parts.storage, storage_key(record.batch.input_file_id), size):
        if chunk_task(chunk.index) in tasks:
            queue.send(parts.celery, queue.RUN_CHUNK, batch_id, chunk.model_dump())
