"""The load generator against a real benchmark-engine worker and redis-server
(no router): non-streaming calls and streams read from Redis, with stamps."""

from __future__ import annotations

import uuid
from pathlib import Path

from bench.client import Call
from bench.context import run_async
from bench.loadgen import fresh_run, open_loop
from bench.stacks import BenchStack


def test_closed_and_open_loops_record_every_request(tmp_path: Path) -> None:
    with BenchStack(tmp_path).start(with_router=False) as stack:
        worker = stack.null_worker(
            "null", "--tokens", "5", "--stamp_tokens", "--step_streams", "--token_interval_ms", "2"
        )
        generate = Call(
            "generate",
            f"{worker.url}/generate",
            lambda i: {
                "request_id": f"t-{i}-{uuid.uuid4().hex}",
                "prompt": "a b",
                "params": {"max_tokens": 4},
            },
        )
        run = run_async(fresh_run(generate, 4, 20, 30))
        assert len(run.records) == 20
        assert all(r.ok and r.tokens == 4 for r in run.records)

        stream = Call(
            "stream",
            f"{worker.url}/generate",
            lambda i: {"request_id": f"s-{i}-{uuid.uuid4().hex}", "prompt": "a b", "stream": True},
            mode="worker_stream",
        )
        streamed = run_async(fresh_run(stream, 5, 10, 30, redis_url=stack.redis_url))
        summary = streamed.summary()
        assert summary["errors"] == 0, summary["first_error"]
        assert summary["tokens"] == 50
        assert summary["relay_samples"] == 50
        assert 0 < summary["relay_ms"]["p50"] < 1000
        assert all(r.ttft_s is not None and len(r.gaps_s) <= 4 for r in streamed.records)

        async def paced() -> int:
            from bench.client import Client

            async with Client() as client:
                result = await open_loop(client, generate, rate_per_s=50, count=10, duration_s=5)
            return len(result.records)

        assert run_async(paced()) == 10
