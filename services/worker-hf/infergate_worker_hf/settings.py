"""The settings of a worker-hf process: KServe's Hugging Face server
arguments on top of what every worker needs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from infergate_common.limits import WorkerLimits
from infergate_common.worker_api import Task
from infergate_common.worker_runner import WorkerServerSettings

from .task_inference import parse_task

BackendChoice = Literal["auto", "huggingface", "vllm"]
DtypeChoice = Literal["auto", "float16", "bfloat16", "float32"]


class HFWorkerSettings(WorkerServerSettings, WorkerLimits):
    """KServe's argument names, snake_case as KServe spells them, and the
    request limits of :class:`~infergate_common.limits.WorkerLimits`
    (``--max_encode_inputs``, ``--max_n``, ``--max_stop_sequences``, ...)."""

    model_name: str = "model"
    # A Hub id or a local folder; wins over model_dir.
    model_id: str | None = None
    model_dir: str = "/mnt/models"
    model_revision: str | None = None
    tokenizer_revision: str | None = None
    task: Task | None = None
    # worker-hf always serves with transformers; the vLLM launcher makes the choice.
    backend: BackendChoice = "auto"
    # Why this backend serves the model; the launcher passes its reason here.
    backend_reason: str | None = None
    max_model_len: int | None = Field(None, ge=1)
    dtype: DtypeChoice = "auto"
    trust_remote_code: bool = False
    disable_lower_case: bool = False
    disable_special_tokens: bool = False
    tensor_input_names: list[str] | None = None
    return_token_type_ids: bool = False
    return_probabilities: bool = False
    return_raw_logits: bool = False
    return_offsets_mapping: bool = False
    return_labels: bool = False
    # "cuda", "cpu", or None: CUDA when present, else CPU.
    device: str | None = None
    # torch intra-op threads; None keeps torch's default.
    torch_threads: int | None = Field(None, ge=1)
    # Encoder tasks: the most inputs one forward pass takes (1 disables batching).
    max_batch_size: int = Field(32, ge=1)
    # Encoder tasks: how long an idle model waits for more requests once one
    # arrived (0: runs at once; requests that arrive during a forward pass
    # form the next batch either way).
    max_batch_wait_ms: float = Field(0.0, ge=0)
    # Generation: the most sequences in the running batch (1 disables batching).
    max_num_seqs: int = Field(16, ge=1)
    # tool_choice "auto": the model's tool-call format (hermes, llama3_json,
    # mistral); None: chosen by the model family.
    tool_call_parser: str | None = None
    # Fill mask with probabilities or raw logits: the tokens returned per
    # mask, and the most a request may ask for (``top_k``).
    fill_mask_top_k: int = Field(5, ge=1)
    max_fill_mask_top_k: int = Field(100, ge=1)

    @field_validator("task", mode="before")
    @classmethod
    def _task_by_name(cls, value: object) -> object:
        # KServe's names and common aliases; an unknown one is KServe's
        # "Task X is not supported" start-up error.
        return parse_task(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exclusive_outputs(self) -> HFWorkerSettings:
        if self.return_probabilities and self.return_raw_logits:
            raise ValueError("--return_probabilities and --return_raw_logits are mutually exclusive")
        return self

    def model_path(self) -> str:
        return self.model_id or self.model_dir
