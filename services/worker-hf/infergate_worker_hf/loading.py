"""Loading a model for a task: config, context length, device, dtype,
tokenizer and weights, the way KServe's Hugging Face server does."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from infergate_common import worker_metrics
from infergate_common.errors import StartupError
from infergate_common.gpu_check import unusable_gpu_reason
from infergate_common.worker_api import Task

from .settings import HFWorkerSettings
from .task_inference import sentence_transformers_max_seq_length

log = logging.getLogger(__name__)

# Config keys that bound the context length (KServe's list, from vLLM); the
# smallest present wins.
CONTEXT_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
DEFAULT_CONTEXT_LENGTH = 2048
# Tokenizers without a declared limit report a huge sentinel; anything above
# this is not a real limit.
_SENSIBLE_TOKENIZER_LIMIT = 10_000_000

_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    config: Any
    task: Task
    architecture: str | None
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    model_id: str
    revision: str | None
    encoder_decoder: bool


def model_class_for(task: Task) -> Any:
    import transformers

    classes = {
        Task.SEQUENCE_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
        Task.TOKEN_CLASSIFICATION: transformers.AutoModelForTokenClassification,
        Task.FILL_MASK: transformers.AutoModelForMaskedLM,
        Task.TEXT_GENERATION: transformers.AutoModelForCausalLM,
        Task.TEXT2TEXT_GENERATION: transformers.AutoModelForSeq2SeqLM,
        Task.TEXT_EMBEDDING: transformers.AutoModel,
    }
    return classes[task]


def resolve_device(settings: HFWorkerSettings) -> torch.device:
    """CUDA when present, else CPU, unless ``--device`` says otherwise."""
    if settings.device:
        device = torch.device(settings.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            reason = gpu_warning(settings.model_name) or "no CUDA device is visible"
            raise StartupError(f"--device {settings.device} asked but CUDA is not available: {reason}")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    gpu_warning(settings.model_name)
    return torch.device("cpu")


@functools.cache
def gpu_warning(model: str) -> str:
    """Why a GPU given to this pod is unusable ('' when none was given or it works);
    logged once, loudly, and counted in ``infergate_worker_gpu_unusable``."""
    error = ""
    try:
        torch.cuda.init()
    except Exception as exc:  # the reason CUDA is unusable: no driver, CPU build of torch
        error = f"{type(exc).__name__}: {exc}"
    reason = unusable_gpu_reason(torch.cuda.is_available(), error)
    worker_metrics.GPU_UNUSABLE.labels(model=model).set(1 if reason else 0)
    if reason:
        log.warning("GPU UNUSABLE: %s", reason, extra={"gpu_unusable": reason})
    return reason


def resolve_dtype(settings: HFWorkerSettings, device: torch.device) -> torch.dtype:
    """KServe's ``auto``: float16 on GPU, float32 on CPU."""
    if settings.dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[settings.dtype]


def load_config(settings: HFWorkerSettings) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            settings.model_path(),
            revision=settings.model_revision,
            trust_remote_code=settings.trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot load the model config from {settings.model_path()}: {exc}") from exc


def _config_context_length(config: Any) -> tuple[float, str | None]:
    derived: float = float("inf")
    key_used = None
    for key in CONTEXT_LENGTH_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0 and value < derived:
            derived, key_used = value, key
    rope = getattr(config, "rope_scaling", None)
    if isinstance(rope, dict) and derived != float("inf"):
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("su", "longrope", "llama3", "default"):
            if rope_type == "yarn" and "original_max_position_embeddings" in rope:
                derived = rope["original_max_position_embeddings"]
            derived *= float(rope.get("factor", 1.0))
    return derived, key_used


def derive_max_model_len(
    config: Any,
    requested: int | None,
    tokenizer_max: int | None = None,
    encoder_max: int | None = None,
) -> int:
    """The context length to serve, as KServe derives it: the smallest length
    key of the config (2048 when none), or a sentence-transformers folder's
    ``max_seq_length``; a tokenizer limit below it lowers the default. A
    request above the config's limit is a StartupError (KServe's check,
    including its ``ALLOW_LONG_MAX_MODEL_LEN=1`` escape)."""
    derived, key_used = _config_context_length(config)
    if derived == float("inf"):
        if requested is not None:
            return requested
        log.warning("config names no context length; assuming %d", DEFAULT_CONTEXT_LENGTH)
        derived = DEFAULT_CONTEXT_LENGTH
    limit = int(derived)
    if requested is None:
        default = limit
        for bound in (encoder_max, tokenizer_max):
            if bound is not None and 0 < bound < _SENSIBLE_TOKENIZER_LIMIT:
                default = min(default, bound)
        return default
    # KServe allows a request up to the config's own model_max_length when
    # that is larger than the position limits.
    model_max_length = getattr(config, "model_max_length", None)
    if requested > limit and not (isinstance(model_max_length, int) and requested <= model_max_length):
        message = (
            f"--max_model_len {requested} is greater than the model's context length "
            f"({key_used or 'default'}={limit} in its config.json)"
        )
        if os.environ.get("ALLOW_LONG_MAX_MODEL_LEN") == "1":
            log.warning("%s; allowed by ALLOW_LONG_MAX_MODEL_LEN=1", message)
            return requested
        raise StartupError(f"{message}; set ALLOW_LONG_MAX_MODEL_LEN=1 to allow it")
    return requested


def check_max_model_len(settings: HFWorkerSettings, config: Any) -> int:
    """The start-up check, from the config alone (no weights loaded)."""
    return derive_max_model_len(
        config,
        settings.max_model_len,
        encoder_max=sentence_transformers_max_seq_length(settings.model_path()),
    )


def load_tokenizer(settings: HFWorkerSettings, task: Task) -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {
        "revision": settings.tokenizer_revision,
        "trust_remote_code": settings.trust_remote_code,
    }
    # KServe lowercases encoder inputs unless --disable_lower_case; a prompt
    # for a generative model is never rewritten.
    if not task.generative:
        kwargs["do_lower_case"] = not settings.disable_lower_case
    return AutoTokenizer.from_pretrained(settings.model_path(), **kwargs)


def _ensure_pad_token(tokenizer: Any, model: torch.nn.Module) -> None:
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        return
    # KServe's fallback: a new [PAD] token and a matching embedding row.
    log.warning("tokenizer has no padding token; adding [PAD]")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    model.resize_token_embeddings(len(tokenizer))  # type: ignore[operator]


def load_model(settings: HFWorkerSettings, task: Task) -> LoadedModel:
    config = load_config(settings)
    device = resolve_device(settings)
    dtype = resolve_dtype(settings, device)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    tokenizer = load_tokenizer(settings, task)
    max_model_len = derive_max_model_len(
        config,
        settings.max_model_len,
        tokenizer_max=getattr(tokenizer, "model_max_length", None),
        encoder_max=sentence_transformers_max_seq_length(settings.model_path()),
    )
    model = model_class_for(task).from_pretrained(
        settings.model_path(),
        config=config,
        revision=settings.model_revision,
        dtype=dtype,
        trust_remote_code=settings.trust_remote_code,
    )
    model.to(device)
    model.eval()
    _ensure_pad_token(tokenizer, model)
    architectures = getattr(config, "architectures", None) or []
    log.info(
        "model loaded",
        extra={"task": task.value, "device": str(device), "dtype": str(dtype), "max_len": max_model_len},
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        task=task,
        architecture=architectures[0] if architectures else None,
        device=device,
        dtype=dtype,
        max_model_len=max_model_len,
        model_id=settings.model_path(),
        revision=settings.model_revision,
        encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
    )
