"""Batch workers (Celery, ``python -m infergate_batch``) for a :class:`Stack`,
and helpers for driving the Batch API with the ``openai`` SDK."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from openai import OpenAI

from .processes import Process
from .stack import Stack

TERMINAL = ("completed", "failed", "expired", "cancelled")


def start_batch_worker(
    stack: Stack, env: Mapping[str, str] | None = None, concurrency: int = 2, timeout_s: float = 60
) -> Process:
    """A Celery batch worker (prefork pool) on the stack's Redis, registry
    and storage; returns once it consumes from the queue."""
    name = f"batch-{uuid.uuid4().hex[:8]}"
    process = Process(
        name,
        [sys.executable, "-m", "infergate_batch", "--concurrency", str(concurrency),
         "--pool", "prefork", "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle"],
        stack.logs / f"{name}.log",
        env={
            **stack._service_env(),
            "INFERGATE_REGISTRY_URL": stack.registry_url,
            "INFERGATE_BATCH_SWEEP_INTERVAL_S": "0.5",
            **(env or {}),
        },
    )  # fmt: skip
    process.wait_until(
        lambda: "batch worker ready" in process.log_tail(200_000), timeout_s, "consuming batches"
    )
    return process


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def wait_batch(
    client: OpenAI, batch_id: str, timeout_s: float = 120, until: tuple[str, ...] = TERMINAL
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s}s: {batch}")
        time.sleep(0.2)


def read_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]
