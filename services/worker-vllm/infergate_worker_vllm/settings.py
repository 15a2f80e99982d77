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
