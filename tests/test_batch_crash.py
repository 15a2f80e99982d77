"""A batch worker killed with SIGKILL in the middle of a 500-line batch:
the chunks it held go back to the queue (``acks_late``, visibility
timeout), another worker runs them, and every ``custom_id`` appears
exactly once across the output and error files. The same when the broker
lost the tasks the dead worker held (a worker killed between taking a task
off the queue and recording it as unacknowledged): the sweeper finds them
missing and sends them again. And a ``start`` task lost before any worker
ran it. The lines run on the benchmark engine: the model's cost is not the
point here."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
import redis
from conftest import StartWorker
from harness.batch import jsonl, read_lines, start_batch_worker, wait_batch
from harness.processes import stop_all
from harness.stack import Stack
from openai import OpenAI

LINES = 500

# Short enough for the test, as a cluster would set them for long generations.
CRASH_ENV = {
    "INFERGATE_BATCH_VISIBILITY_TIMEOUT_S": "3",
    "INFERGATE_BATCH_SLOT_LEASE_S": "3",
    "INFERGATE_BATCH_CHUNK_LINES": "10",
    "INFERGATE_BATCH_LINES_PER_REPLICA": "1",
    "INFERGATE_BATCH_LOST_TASK_AFTER_S": "1",
}


def broker_keys(stack: Stack) -> tuple[redis.Redis, str, str]:
    """A client on the stack's Redis (the Celery broker), the queue's key
    and the key of the tasks workers hold unacknowledged."""
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    prefix = f"{stack.prefix}:celery:"
    return client, f"{prefix}infergate-batch", f"{prefix}unacked"


def batch_lines(count: int) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"line-{i:03d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "null-batch",
                "messages": [{"role": "user", "content": f"n {i}"}],
                "max_tokens": 4,
            },
        }
        for i in range(count)
    ]


def assert_each_line_once(client: OpenAI, done: Any, lines: list[dict[str, Any]]) -> None:
    assert done.status == "completed", done
    assert done.request_counts.total == len(lines)
    assert done.request_counts.completed == len(lines) and done.request_counts.failed == 0
    assert done.error_file_id is None
    output = read_lines(client, done.output_file_id)
    custom_ids = [line["custom_id"] for line in output]
    assert len(custom_ids) == len(lines), f"{len(custom_ids)} output lines for {len(lines)} requests"
    # In input order, each answered by the engine.
    assert custom_ids == [line["custom_id"] for line in lines]
    assert all(line["response"]["body"]["choices"][0]["message"]["content"] for line in output)


@pytest.mark.parametrize("broker_lost_them", [False, True], ids=["redelivered", "lost-by-the-broker"])
def test_sigkill_mid_batch_loses_and_duplicates_nothing(
    stack: Stack, null_worker: StartWorker, broker_lost_them: bool
) -> None:
    null_worker("null-batch", "--tokens", "4")
    client = OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0)
    lines = batch_lines(LINES)
    file = client.files.create(file=("kill.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    first = start_batch_worker(stack, env=CRASH_ENV)
    second = None
    try:
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while True:
            seen = client.batches.retrieve(batch.id)
            if seen.request_counts is not None and seen.request_counts.completed >= LINES // 5:
                break
            assert time.monotonic() < deadline, f"the batch did not progress: {seen}"
            time.sleep(0.05)
        first.kill()
        at_kill = client.batches.retrieve(batch.id)
        assert at_kill.status == "in_progress", at_kill
        assert at_kill.request_counts is not None and at_kill.request_counts.completed < LINES
        if broker_lost_them:
            broker, _, unacked = broker_keys(stack)
            held = broker.hlen(unacked)
            assert held >= 1, "the killed worker held no task"
            broker.delete(unacked, f"{unacked}_index")

        second = start_batch_worker(stack, env=CRASH_ENV)
        done = wait_batch(client, batch.id, timeout_s=180)
    finally:
        stop_all([p for p in (first, second) if p is not None])
    assert_each_line_once(client, done, lines)


def test_a_start_task_the_broker_lost_is_sent_again(stack: Stack, null_worker: StartWorker) -> None:
    null_worker("null-batch", "--tokens", "4")
    client = OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0)
    lines = batch_lines(30)
    file = client.files.create(file=("lost.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    broker, queue_key, _ = broker_keys(stack)
    # No batch worker yet: the router's start task waits in the queue; a
    # worker that took it and died before recording it leaves nothing behind.
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    ours = [str(raw) for raw in broker.lrange(queue_key, 0, -1) if batch.id in str(raw)]
    assert len(ours) == 1 and "infergate_batch.start" in ours[0], ours
    assert broker.lrem(queue_key, 1, ours[0]) == 1
    worker = start_batch_worker(stack, env=CRASH_ENV)
    try:
        done = wait_batch(client, batch.id, timeout_s=60)
    finally:
        stop_all([worker])
    assert_each_line_once(client, done, lines)
