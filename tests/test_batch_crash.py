"""A batch worker killed with SIGKILL in the middle of a 500-line batch:
the chunks it held go back to the queue (``acks_late``, visibility
timeout), another worker runs them, and every ``custom_id`` appears
exactly once across the output and error files. The lines run on the
benchmark engine: the model's cost is not the point here."""

from __future__ import annotations

import io
import time

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
}


def test_sigkill_mid_batch_loses_and_duplicates_nothing(stack: Stack, null_worker: StartWorker) -> None:
    null_worker("null-batch", "--tokens", "4")
    client = OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0)
    lines = [
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
        for i in range(LINES)
    ]
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

        second = start_batch_worker(stack, env=CRASH_ENV)
        done = wait_batch(client, batch.id, timeout_s=180)
    finally:
        stop_all([p for p in (first, second) if p is not None])

    assert done.status == "completed", done
    assert done.request_counts.total == LINES
    assert done.request_counts.completed == LINES and done.request_counts.failed == 0
    assert done.error_file_id is None
    output = read_lines(client, done.output_file_id)
    custom_ids = [line["custom_id"] for line in output]
    assert len(custom_ids) == LINES, f"{len(custom_ids)} output lines for {LINES} requests"
    assert set(custom_ids) == {line["custom_id"] for line in lines}
    # In input order, each answered by the engine.
    assert custom_ids == [line["custom_id"] for line in lines]
    assert all(line["response"]["body"]["choices"][0]["message"]["content"] for line in output)
