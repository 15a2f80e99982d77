"""The Batch API beside interactive traffic (issue 14).

* Interactive chat latency (non-streaming, 8 tokens, temperature 0) at
  concurrency 2 against the tiny Llama on worker-hf, with no batch,
  then with a 2,000-line chat batch of the same requests running on the
  same model through a real Celery batch worker, then with no batch again.
  The batch is cancelled once the interactive run ends; the target holds the
  run beside the batch to the mean of the two runs without.
* Batch throughput: lines/s of a batch of the same lines, from
  ``batches.create`` to ``completed`` as a client polling every 0.2 s sees
  it, against the same lines sent interactively by a client at the batch's
  per-model concurrency (``batch_lines_per_replica`` x one replica).
"""

from __future__ import annotations

import io
import json
import os
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


def _mean(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a + b) / 2


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Batch API beside interactive traffic",
        "Interactive chat p50/p99 (non-streaming, tiny Llama on worker-hf, 8 tokens) with no batch and "
        "with a 2,000-line chat batch running on the same model through a Celery batch worker; batch "
        "lines/s against the same lines sent interactively at the batch's per-model concurrency.",
    )
    assert ctx.models_dir is not None
    models = ensure_test_models(ctx.models_dir)
    duration = ctx.pick(20.0, 60.0)
    tokens = 8
    concurrency = 2
    throughput_lines = ctx.pick(120, 400)
    from harness.batch import start_batch_worker
    from harness.processes import stop_all

    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        # One torch thread: the worker shares the two cores with the router,
        # the batch worker and the load generator.
        threads = ["--torch_threads", "1"]
        stack.start_worker("llama", worker_hf("llama", models / "tiny-llama", *threads))
        stack.wait_routable("llama")
        batch_worker = start_batch_worker(
            stack.stack,
            env={
                "INFERGATE_BATCH_LINES_PER_REPLICA": str(LINES_PER_REPLICA),
                # The floor interactive load lowers the batch cap to: the
                # default (0), or the caller's, to measure the other choice.
                "INFERGATE_BATCH_MIN_MODEL_CONCURRENCY": os.environ.get(
                    "INFERGATE_BATCH_MIN_MODEL_CONCURRENCY", "0"
                ),
            },
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
            before = started.request_counts.completed if started.request_counts else 0
            beside_began = time.monotonic()
            beside = run_async(fresh_run(chat, concurrency, 100_000, duration, warmup=concurrency)).summary()
            beside["label"] = f"interactive chat, c={concurrency}, 2,000-line batch running"
            during = client.batches.retrieve(big.id)
            beside_s = time.monotonic() - beside_began
            client.batches.cancel(big.id)
            cancelled = wait(client, big.id, ("cancelled",), 120)
            lines_during = (during.request_counts.completed if during.request_counts else 0) - before
            # The baseline again, after the batch: drift over the run (a
            # warming process, another load on the machine) shows as a gap
            # between the two, and their mean is what the batch is held to.
            after = run_async(fresh_run(chat, concurrency, 100_000, duration, warmup=concurrency)).summary()
            after["label"] = f"interactive chat, c={concurrency}, no batch (again, after)"

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

    result.runs += [alone, beside, after, direct]
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
            "lines_per_s": round(lines_during / beside_s, 2) if beside_s else None,
        },
        {
            "case": after["label"],
            "p50_ms": ms(after, "latency_ms", "p50"),
            "p99_ms": ms(after, "latency_ms", "p99"),
            "requests": after["requests"],
            "errors": after["errors"],
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
    p50_alone = _mean(ms(alone, "latency_ms", "p50"), ms(after, "latency_ms", "p50"))
    p99_alone = _mean(ms(alone, "latency_ms", "p99"), ms(after, "latency_ms", "p99"))
    p50_beside, p99_beside = ms(beside, "latency_ms", "p50"), ms(beside, "latency_ms", "p99")
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
