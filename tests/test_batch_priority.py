"""Batch lines give way to interactive traffic: the routers (gunicorn +
gevent) report their requests in flight per model, and the batch workers'
per-model cap falls by one per interactive request, down to its floor (0
by default: the batch waits), then rises again when the interactive
requests end. Real router,
registry, Redis, Celery batch worker and benchmark-engine worker."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import redis
from conftest import StartWorker
from harness.batch import jsonl, start_batch_worker, wait_batch
from harness.numbered_streams import read_stream
from harness.processes import stop_all
from harness.stack import Stack
from openai import OpenAI

MODEL = "prio"
LINES = 200
BASE_CAP = 3  # INFERGATE_BATCH_LINES_PER_REPLICA with one replica
INTERACTIVE = 3  # streams of 4 s each (400 tokens, 10 ms apart)


def _poll(condition: Callable[[], bool], what: Callable[[], str], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.02)


def test_batch_lines_give_way_to_interactive_requests(stack: Stack, null_worker: StartWorker) -> None:
    null_worker(MODEL, "--tokens", "400", "--token_interval_ms", "10", "--answer_ms", "200")
    admin = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    slots_key = f"{stack.prefix}:batch:slots:{MODEL}"
    load_key = f"{stack.prefix}:interactive:{MODEL}"

    def batch_lines() -> int:
        return int(admin.zcount(slots_key, time.time(), "+inf"))

    def interactive() -> int:
        return sum(int(value.split(":")[0]) for value in admin.hvals(load_key))

    def state() -> str:
        seen = client.batches.retrieve(batch.id)
        return f"{seen.status} {seen.request_counts}; lines {batch_lines()}, interactive {interactive()}"

    client = OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 20}
    lines = [
        {"custom_id": f"p{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i in range(LINES)
    ]
    file = client.files.create(file=("prio.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    worker = start_batch_worker(
        stack,
        env={
            "INFERGATE_BATCH_LINES_PER_REPLICA": str(BASE_CAP),
            "INFERGATE_BATCH_CHUNK_LINES": "4",
            "INFERGATE_BATCH_CHUNK_THREADS": "4",
        },
    )
    try:
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        _poll(
            lambda: batch_lines() == BASE_CAP, lambda: f"the batch never ran its full cap of lines: {state()}"
        )

        streams = [
            threading.Thread(target=read_stream, args=(f"{stack.openai_url}/completions", MODEL, 400))
            for _ in range(INTERACTIVE)
        ]
        for thread in streams:
            thread.start()
        _poll(
            lambda: interactive() == INTERACTIVE,
            lambda: f"the router never reported its interactive requests: {state()}",
        )
        # Lines that started before the report finish (--answer_ms 200); after
        # that, no line starts while the streams last.
        _poll(lambda: batch_lines() == 0, lambda: f"the running lines never finished: {state()}", 5)
        seen = []
        while any(thread.is_alive() for thread in streams) and len(seen) < 100:
            seen.append(batch_lines())
            time.sleep(0.02)
        assert len(seen) >= 50, "the interactive streams ended too early to observe the batch"
        assert max(seen) == 0, seen

        for thread in streams:
            thread.join(30)
        _poll(lambda: interactive() == 0, lambda: f"the router's report did not go back to zero: {state()}")
        _poll(lambda: batch_lines() == BASE_CAP, lambda: f"the batch did not take its cap back: {state()}")
        client.batches.cancel(batch.id)
        assert wait_batch(client, batch.id).status == "cancelled"
    finally:
        stop_all([worker])
