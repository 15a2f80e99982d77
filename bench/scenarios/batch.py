"""The Batch API beside interactive traffic (issue 14).

* Interactive chat latency (non-streaming, 16 tokens, temperature 0) at a
  fixed concurrency against the tiny Llama on worker-hf, with no batch,
  then with a 2,000-line chat batch of the same requests running on the
  same model through a real Celery batch worker. The batch is cancelled
  once the interactive run ends.
* Batch throughput: lines/s of a batch of the same lines, from
  ``batches.create`` to ``completed`` as a client polling every 0.2 s sees
  it, against the same lines sent interactively by a client at the batch's
  per-model concurrency (``batch_lines_per_replica`` x one replica).
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

from openai import OpenAI

from ..client import Call
from ..context import Context, ScenarioResult, below, ms, run_async
from ..loadgen import fresh_run
from ..models import ensure_test_models, worker_hf
from ..stacks import BenchStack

NAME = "batch"

PROMPTS = ["Tell me a story", "What is the weather like", "Name three colours", "Why is the sky blue"]
LINES_PER_REPLICA = 2


def chat_body(model: str, i: int, tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


def upload(client: OpenAI, model: str, count: int, tokens: int) -> str:
    lines = [
        {
            "custom_id": f"l{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": chat_body(model, i, tokens),
        }
        for i in range(count)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch").id


def wait(client: OpenAI, batch_id: str, statuses: tuple[str, ...], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Batch API beside interactive traffic",
        "Interactive chat p50/p99 (non-streaming, tiny Llama on worker-hf, 16 tokens) with no batch and "
        "with a 2,000-line chat batch running on the same model through a Celery batch worker; batch "
        "lines/s against the same lines sent interactively at the batch's per-model concurrency.",
    )
    assert ctx.models_dir is not None
    models = ensure_test_models(ctx.models_dir)
    duration = ctx.pick(20.0, 60.0)
    tokens = 16
    concurrency = ctx.pick(2, 4)
    throughput_lines = ctx.pick(120, 400)
    from harness.batch import start_batch_worker
    from harness.processes import stop_all

    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        threads = ["--torch_threads", str(ctx.worker_threads)]
        stack.start_worker("llama", worker_hf("llama", models / "tiny-llama", *threads))
        stack.wait_routable("llama")
        batch_worker = start_batch_worker(
            stack.stack,
            env={"INFERGATE_BATCH_LINES_PER_REPLICA": str(LINES_PER_REPLICA)},
        )
        try:
            client = OpenAI(base_url=f"{stack.router_url}/openai/v1", api_key="unused", max_retries=0)
            chat = Call(
                "chat",
                f"{stack.router_url}/openai/v1/chat/completions",
                lambda i: chat_body("llama", i, tokens),
            )

            alone = run_async(fresh_run(chat, concurrency, 100_000, duration, warmup=concurrency)).summary()
            alone["label"] = f"interactive chat, c={concurrency}, no batch"

            big = client.batches.create(
                input_file_id=upload(client, "llama", 2000, tokens),
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            started = wait(client, big.id, ("in_progress",), 60)
            beside = run_async(fresh_run(chat, concurrency, 100_000, duration, warmup=concurrency)).summary()
            beside["label"] = f"interactive chat, c={concurrency}, 2,000-line batch running"
            during = client.batches.retrieve(big.id)
            client.batches.cancel(big.id)
            cancelled = wait(client, big.id, ("cancelled",), 120)
            lines_during = during.request_counts.completed if during.request_counts else 0

            small_file = upload(client, "llama", throughput_lines, tokens)
            began = time.monotonic()
            small = client.batches.create(
                input_file_id=small_file, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = wait(client, small.id, ("completed", "failed", "expired", "cancelled"), 600)
            batch_s = time.monotonic() - began
            batch_ok = done.request_counts.completed if done.request_counts else 0

            direct = run_async(
                fresh_run(chat, LINES_PER_REPLICA, throughput_lines, 600, warmup=LINES_PER_REPLICA)
            ).summary()
            direct["label"] = f"the same {throughput_lines} lines sent interactively, c={LINES_PER_REPLICA}"
        finally:
            stop_all([batch_worker])

    result.runs += [alone, beside, direct]
    batch_rate = round(batch_ok / batch_s, 2) if batch_s else 0.0
    result.rows = [
        {
            "case": alone["label"],
            "p50_ms": ms(alone, "latency_ms", "p50"),
            "p99_ms": ms(alone, "latency_ms", "p99"),
            "requests": alone["requests"],
            "errors": alone["errors"],
        },
        {
            "case": beside["label"],
            "p50_ms": ms(beside, "latency_ms", "p50"),
            "p99_ms": ms(beside, "latency_ms", "p99"),
            "requests": beside["requests"],
            "errors": beside["errors"],
            "batch_lines_done_meanwhile": lines_during,
        },
        {
            "case": f"batch of {throughput_lines} lines (create to completed)",
            "lines_per_s": batch_rate,
            "lines": batch_ok,
            "status": done.status,
        },
        {
            "case": direct["label"],
            "lines_per_s": direct["requests_per_s"],
            "lines": direct["requests"] - direct["errors"],
            "errors": direct["errors"],
        },
    ]
    p50_alone, p50_beside = ms(alone, "latency_ms", "p50"), ms(beside, "latency_ms", "p50")
    p99_alone, p99_beside = ms(alone, "latency_ms", "p99"), ms(beside, "latency_ms", "p99")
    ratio = round(p50_beside / p50_alone, 3) if p50_alone and p50_beside else None
    result.targets = [below("interactive p50, a batch running / no batch", ratio, 1.2, "x")]
    p99_ratio = round(p99_beside / p99_alone, 3) if p99_alone and p99_beside else None
    result.notes.append(
        f"p99 with / without the batch: {p99_ratio}x. "
        f"Batch lines/s over interactive lines/s at the same concurrency: "
        f"{round(batch_rate / direct['requests_per_s'], 3) if direct['requests_per_s'] else None}x. "
        f"The 2,000-line batch had {started.status} status when the interactive run began and "
        f"ended {cancelled.status} with {lines_during} lines done during the run."
    )
    return result
