"""A quick measurement: tokens/s of 8 concurrent streams from a worker-hf
process with continuous batching against one with ``--max_num_seqs 1``
(one sequence at a time).

The figures are printed (``pytest -s``); the assertion is loose because the
test machine's two cores are shared. ``bench/`` holds the benchmark proper.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from generation_fixtures import read_stream
from harness.redis_server import RedisServer
from hf_worker_process import HFWorker

from infergate_common.streams import DEFAULT_PREFIX, DoneEvent

STREAMS = 8
TOKENS = 96


def streamed_tokens_per_s(worker: HFWorker, redis_server: RedisServer) -> float:
    done: list[DoneEvent] = []

    def read(request_id: str) -> None:
        events = read_stream(redis_server.client(), DEFAULT_PREFIX, request_id, 120)
        assert isinstance(events[-1], DoneEvent), events[-1]
        done.append(events[-1])

    ids = [uuid.uuid4().hex for _ in range(STREAMS)]
    readers = [threading.Thread(target=read, args=(request_id,)) for request_id in ids]
    started = time.monotonic()
    for index, (request_id, reader) in enumerate(zip(ids, readers, strict=True)):
        body = {
            "request_id": request_id,
            "prompt": f"Request {index}: once upon a time",
            "stream": True,
            "params": {"max_tokens": TOKENS, "ignore_eos": True, "seed": index},
        }
        assert worker.post("/generate", body).status_code == 202
        reader.start()
    for reader in readers:
        reader.join(180)
    elapsed = time.monotonic() - started
    assert len(done) == STREAMS
    return sum(event.usage.completion_tokens for event in done) / elapsed


def test_continuous_batching_multiplies_throughput(
    models: Path, hf_worker: Callable[..., HFWorker], redis_server: RedisServer
) -> None:
    batched = hf_worker(models / "tiny-llama")
    serial = hf_worker(models / "tiny-llama", "--max_num_seqs", "1")
    assert batched.info()["extra"]["max_num_seqs"] >= STREAMS
    assert serial.info()["extra"]["max_num_seqs"] == 1
    figures = []
    # Alternating rounds, so both see the same load from other processes;
    # the best round of each is the least disturbed one.
    for _ in range(3):
        one = streamed_tokens_per_s(serial, redis_server)
        figures.append((one, streamed_tokens_per_s(batched, redis_server)))
    ratio = max(many for _, many in figures) / max(one for one, _ in figures)
    rounds = [(round(one), round(many)) for one, many in figures]
    print(f"\n{STREAMS} streams x {TOKENS} tokens, tokens/s (max_num_seqs 1, 16) per round: {rounds}")
    print(f"best-of ratio {ratio:.2f}x")
    if ratio < 3.0:
        pytest.fail(f"continuous batching gave only {ratio:.2f}x the tokens/s of one at a time")
