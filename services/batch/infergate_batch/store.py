"""The records of files and batches, and the results of batch lines, in Redis.

Keys (``P`` is the deployment's prefix, ``infergate`` by default)::

    P:batch:file:<id>       JSON FileRecord
    P:batch:files           ZSET of file ids by creation time (µs)
    P:batch:batch:<id>      JSON BatchRecord
    P:batch:batches         ZSET of batch ids by creation time (µs)
    P:batch:active          SET of batches not yet in a final state
    P:batch:ok:<id>         HASH custom_id -> output line (JSON)
    P:batch:err:<id>        HASH custom_id -> error line (JSON)
    P:batch:done:<id>       SET of chunk indexes that have run
    P:batch:finalize:<id>   lock held while the output files are written

Invariant: a ``custom_id`` is in at most one of ``ok`` and ``err``, written
once (:meth:`BatchStore.put_line` is one Lua script), so a chunk that runs
twice after a crash never produces a second line for it. The request
counts are the sizes of those two hashes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from infergate_common.errors import NotFound

from .objects import BatchObject, BatchRecord, FileObject, FileRecord, RequestCounts

_PUT_LINE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[tonumber(ARGV[3])], ARGV[1], ARGV[2])
return 1
"""

# Results of a finished batch stay this long after its files are written.
RESULT_TTL_S = 3600


def micros() -> int:
    return time.time_ns() // 1000


class BatchStore:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = f"{prefix}:batch"
        self._put_line = client.register_script(_PUT_LINE)

    # ------------------------------------------------------------- keys

    def _file(self, file_id: str) -> str:
        return f"{self.prefix}:file:{file_id}"

    def _batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def ok_key(self, batch_id: str) -> str:
        return f"{self.prefix}:ok:{batch_id}"

    def err_key(self, batch_id: str) -> str:
        return f"{self.prefix}:err:{batch_id}"

    def _done(self, batch_id: str) -> str:
        return f"{self.prefix}:done:{batch_id}"

    @property
    def _active(self) -> str:
        return f"{self.prefix}:active"

    # ------------------------------------------------------------ files

    def add_file(self, record: FileRecord) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self._file(record.file.id), record.model_dump_json())
        pipe.zadd(f"{self.prefix}:files", {record.file.id: micros()})
        pipe.execute()

    def get_file(self, file_id: str, owner: str | None = None) -> FileRecord:
        raw = self.redis.get(self._file(file_id))
        if raw is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")
        record = FileRecord.model_validate_json(raw)
        if not _visible(record.owner, owner):
            raise NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")
        return record

    def delete_file(self, file_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self._file(file_id))
        pipe.zrem(f"{self.prefix}:files", file_id)
        pipe.execute()

    def list_files(
        self, owner: str | None, purpose: str | None, after: str | None, limit: int, newest_first: bool
    ) -> tuple[list[FileObject], bool]:
        def load(ids: list[str]) -> list[FileRecord]:
            raws = self.redis.mget([self._file(i) for i in ids]) if ids else []
            return [FileRecord.model_validate_json(r) for r in raws if r is not None]

        def keep(record: FileRecord) -> bool:
            return _visible(record.owner, owner) and (purpose is None or record.file.purpose == purpose)

        records, more = self._page(f"{self.prefix}:files", after, limit, newest_first, load, keep)
        return [r.file for r in records], more

    # ---------------------------------------------------------- batches

    def add_batch(self, record: BatchRecord) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self._batch(record.batch.id), record.model_dump_json())
        pipe.zadd(f"{self.prefix}:batches", {record.batch.id: micros()})
        pipe.sadd(self._active, record.batch.id)
        pipe.execute()

    def get_batch(self, batch_id: str, owner: str | None = None) -> BatchRecord:
        raw = self.redis.get(self._batch(batch_id))
        if raw is None:
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")
        record = BatchRecord.model_validate_json(raw)
        if not _visible(record.owner, owner):
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")
        return record

    def update_batch(self, batch_id: str, change: Callable[[BatchRecord], bool]) -> BatchRecord:
        """Apply ``change`` atomically (optimistic: retried when another
        process wrote the record meanwhile); it returns whether to save."""
        key = self._batch(batch_id)
        result: list[BatchRecord] = []

        def attempt(pipe: Any) -> None:
            raw = pipe.get(key)
            if raw is None:
                raise NotFound(f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")
            record = BatchRecord.model_validate_json(raw)
            save = change(record)
            result[:] = [record]
            if save:
                pipe.multi()
                pipe.set(key, record.model_dump_json())
                if record.batch.status.terminal:
                    pipe.srem(self._active, batch_id)

        self.redis.transaction(attempt, key)
        return result[0]

    def list_batches(
        self, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchObject], bool]:
        def load(ids: list[str]) -> list[BatchRecord]:
            raws = self.redis.mget([self._batch(i) for i in ids]) if ids else []
            return [BatchRecord.model_validate_json(r) for r in raws if r is not None]

        records, more = self._page(
            f"{self.prefix}:batches", after, limit, True, load, lambda r: _visible(r.owner, owner)
        )
        return [self.with_counts(r.batch) for r in records], more

    def active_batches(self) -> list[str]:
        return sorted(str(member) for member in self.redis.smembers(self._active))

    # ------------------------------------------------------------ lines

    def put_line(self, batch_id: str, custom_id: str, line_json: str, failed: bool) -> bool:
        """Record a line's result unless the ``custom_id`` already has one."""
        keys = [self.ok_key(batch_id), self.err_key(batch_id)]
        return bool(self._put_line(keys=keys, args=[custom_id, line_json, 2 if failed else 1]))

    def has_line(self, batch_id: str, custom_id: str) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hexists(self.ok_key(batch_id), custom_id)
        pipe.hexists(self.err_key(batch_id), custom_id)
        return any(pipe.execute())

    def lines_of(self, batch_id: str, custom_ids: list[str]) -> list[tuple[str | None, str | None]]:
        """``(output line, error line)`` of each ``custom_id``."""
        if not custom_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.ok_key(batch_id), custom_ids)
        pipe.hmget(self.err_key(batch_id), custom_ids)
        ok, err = pipe.execute()
        return list(zip(ok, err, strict=True))

    def counts(self, batch_id: str) -> tuple[int, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(self.ok_key(batch_id))
        pipe.hlen(self.err_key(batch_id))
        ok, err = pipe.execute()
        return int(ok), int(err)

    def with_counts(self, batch: BatchObject) -> BatchObject:
        """The batch with live request counts while its lines run."""
        if batch.status.terminal:
            return batch
        completed, failed = self.counts(batch.id)
        counts = RequestCounts(total=batch.request_counts.total, completed=completed, failed=failed)
        return batch.model_copy(update={"request_counts": counts})

    def chunk_done(self, batch_id: str, index: int) -> int:
        """Mark a chunk as run; the number of chunks run so far."""
        pipe = self.redis.pipeline()
        pipe.sadd(self._done(batch_id), index)
        pipe.scard(self._done(batch_id))
        return int(pipe.execute()[1])

    def chunks_done(self, batch_id: str) -> int:
        return int(self.redis.scard(self._done(batch_id)))

    def done_chunks(self, batch_id: str) -> set[str]:
        """The indexes of the chunks run so far, as strings."""
        return {str(index) for index in self.redis.smembers(self._done(batch_id))}  # type: ignore[union-attr]

    def finalize_lock(self, batch_id: str, ttl_s: int) -> bool:
        return bool(self.redis.set(f"{self.prefix}:finalize:{batch_id}", "1", nx=True, ex=ttl_s))

    def finalize_unlock(self, batch_id: str) -> None:
        self.redis.delete(f"{self.prefix}:finalize:{batch_id}")

    def expire_results(self, batch_id: str) -> None:
        """The files now hold the lines: let Redis forget them after a while."""
        pipe = self.redis.pipeline(transaction=False)
        for key in (self.ok_key(batch_id), self.err_key(batch_id), self._done(batch_id)):
            pipe.expire(key, RESULT_TTL_S)
        pipe.execute()

    def sweep_lock(self, ttl_s: float) -> bool:
        """One sweeper per interval across every batch worker."""
        return bool(self.redis.set(f"{self.prefix}:sweep", "1", nx=True, px=max(1, int(ttl_s * 1000))))

    # ------------------------------------------------------------- pages

    def _page(
        self,
        index: str,
        after: str | None,
        limit: int,
        newest_first: bool,
        load: Callable[[list[str]], Iterable[Any]],
        keep: Callable[[Any], bool],
    ) -> tuple[list[Any], bool]:
        """Up to ``limit`` records after the one named ``after``, and
        whether more follow."""
        if after is not None:
            score = self.redis.zscore(index, after)
            if score is None:
                raise NotFound(f"No object with id {after} to list after", param="after")
            bound = f"({int(score)}"
        else:
            bound = "+inf" if newest_first else "-inf"
        found: list[Any] = []
        step = limit + 1
        offset = 0
        while len(found) <= limit:
            if newest_first:
                ids = self.redis.zrevrangebyscore(index, bound, "-inf", start=offset, num=step)
            else:
                ids = self.redis.zrangebyscore(index, bound, "+inf", start=offset, num=step)
            if not ids:
                break
            offset += len(ids)
            found.extend(record for record in load([str(i) for i in ids]) if keep(record))
        return found[:limit], len(found) > limit


def _visible(record_owner: str | None, asking: str | None) -> bool:
    """Files and batches of the whole deployment (owner None) are visible to
    everyone; others only to their owner."""
    return record_owner is None or record_owner == asking
