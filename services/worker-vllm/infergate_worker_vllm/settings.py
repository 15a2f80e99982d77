"""The settings of a worker-vllm process: worker-hf's (KServe's arguments,
which the transformers fallback needs as they are) plus vLLM's engine flags."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from infergate_worker_hf.settings import HFWorkerSettings


class VllmWorkerSettings(HFWorkerSettings):
    # vLLM engine flags given on the command line, as AsyncEngineArgs field
    # names and parsed values (``--gpu-memory-utilization 0.5`` ->
    # ``{"gpu_memory_utilization": 0.5}``).
    engine_flags: dict[str, Any] = Field(default_factory=dict)
    # Seconds between the engine's death and the worker's exit (so that its
    # supervisor restarts it); None keeps the process up, not ready.
    exit_after_engine_death_s: float | None = Field(10.0, ge=0)
