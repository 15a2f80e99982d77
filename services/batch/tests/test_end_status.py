"""Which final status a finalize chooses."""

from __future__ import annotations

import time

from infergate_batch.objects import BatchObject, BatchRecord, BatchStatus, RequestCounts
from infergate_batch.runs import _end_status


def record(status: BatchStatus, expires_in: int, chunks: int = 3, expire: bool = False) -> BatchRecord:
    now = int(time.time())
    batch = BatchObject(
        id="b",
        endpoint="/v1/embeddings",
        input_file_id="f",
        completion_window="24h",
        status=status,
        created_at=now,
        expires_at=now + expires_in,
        request_counts=RequestCounts(total=10),
    )
    return BatchRecord(batch=batch, chunks=chunks, expire=expire)


def test_every_chunk_run_and_every_line_done_is_completed() -> None:
    assert _end_status(record(BatchStatus.IN_PROGRESS, 60), 3, 10) == BatchStatus.COMPLETED
    # Done in time: still completed when the finalize runs after the window.
    assert _end_status(record(BatchStatus.IN_PROGRESS, -5), 3, 10) == BatchStatus.COMPLETED


def test_chunks_that_skipped_lines_after_the_window_make_it_expired() -> None:
    assert _end_status(record(BatchStatus.IN_PROGRESS, -5), 3, 4) == BatchStatus.EXPIRED
    assert _end_status(record(BatchStatus.IN_PROGRESS, 60, expire=True), 3, 4) == BatchStatus.EXPIRED


def test_past_the_window_it_does_not_wait_for_chunks() -> None:
    assert _end_status(record(BatchStatus.IN_PROGRESS, -5), 1, 4) == BatchStatus.EXPIRED
    assert _end_status(record(BatchStatus.IN_PROGRESS, 60), 1, 4) is None


def test_a_cancelled_batch_waits_for_its_chunks() -> None:
    assert _end_status(record(BatchStatus.CANCELLING, 60), 1, 4) is None
    assert _end_status(record(BatchStatus.CANCELLING, 60), 3, 4) == BatchStatus.CANCELLED
    assert _end_status(record(BatchStatus.CANCELLING, -5), 1, 4) == BatchStatus.CANCELLED
