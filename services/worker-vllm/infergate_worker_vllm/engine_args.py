"""vLLM's engine flags: parsed by vLLM's own argument parser (so every flag
of the installed release, with its types and choices, passes through), and
merged with KServe's arguments and this platform's defaults into
``AsyncEngineArgs``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, NoReturn

from infergate_common.errors import StartupError

from .settings import VllmWorkerSettings

log = logging.getLogger(__name__)

# On the CPU vLLM sizes its KV cache as this fraction of the machine's
# memory; its GPU default (0.9) is refused when other processes use memory.
CPU_MEMORY_UTILIZATION = 0.2

# Flags whose value comes from KServe's arguments (the model, its revision,
# its context length, ...); given twice they would disagree.
_OWNED_BY_SETTINGS = {"model", "revision", "tokenizer_revision", "trust_remote_code"}


def visible_gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install counts as no GPU
        return 0


def default_tensor_parallel_size(gpus: int) -> int:
    """Every visible GPU, and 1 without any (KServe issue 3769: a GPU-less
    node got 0 and vLLM crashed)."""
    return max(1, gpus)


def _normalise(argv: Sequence[str]) -> list[str]:
    """``--max_num_batched_tokens=4`` -> ``--max-num-batched-tokens=4``."""
    out = []
    for item in argv:
        if item.startswith("--"):
            name, sep, value = item[2:].partition("=")
            item = "--" + name.replace("_", "-") + sep + value
        out.append(item)
    return out


class _FlagError(Exception):
    pass


def _engine_parser() -> argparse.ArgumentParser:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    class Parser(FlexibleArgumentParser):  # type: ignore[misc]
        def error(self, message: str) -> NoReturn:
            raise _FlagError(message)

    parser = AsyncEngineArgs.add_cli_args(Parser(add_help=False))
    # Only the flags actually given land in the namespace.
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return parser


def parse_engine_flags(argv: Sequence[str]) -> dict[str, Any]:
    """The engine flags in ``argv`` as ``AsyncEngineArgs`` fields; a flag
    vLLM does not know is a StartupError naming it."""
    if not argv:
        return {}
    from vllm.engine.arg_utils import AsyncEngineArgs

    parser = _engine_parser()
    try:
        namespace, unknown = parser.parse_known_args(_normalise(argv))
    except _FlagError as exc:
        raise StartupError(f"invalid vLLM engine flag: {exc}") from exc
    if unknown:
        named = [item for item in unknown if item.startswith("-")] or unknown
        raise StartupError(
            f"unknown flag(s) {' '.join(named)}: neither a worker argument nor a field of "
            "vLLM's AsyncEngineArgs (see python -m vllm.entrypoints.openai.api_server --help)"
        )
    fields = {field.name for field in dataclasses.fields(AsyncEngineArgs)}
    flags: dict[str, Any] = vars(namespace)
    stray = sorted(set(flags) - fields)
    if stray:
        raise StartupError(f"flag(s) {', '.join(stray)} are not AsyncEngineArgs fields")
    owned = sorted(set(flags) & _OWNED_BY_SETTINGS)
    if owned:
        raise StartupError(
            f"set {', '.join(owned)} with the worker arguments (--model_id, --model_revision, "
            "--tokenizer_revision, --trust_remote_code), not as engine flags"
        )
    return flags


def resolve_engine_args(settings: VllmWorkerSettings, gpus: int | None = None) -> Any:
    """``AsyncEngineArgs`` for ``settings``: KServe's arguments, then the
    platform defaults, then the engine flags given (which win)."""
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    gpus = visible_gpu_count() if gpus is None else gpus
    explicit = settings.model_fields_set
    values: dict[str, Any] = {
        "model": settings.model_path(),
        "revision": settings.model_revision,
        "tokenizer_revision": settings.tokenizer_revision,
        "trust_remote_code": settings.trust_remote_code,
        "served_model_name": settings.model_name,
        "tensor_parallel_size": default_tensor_parallel_size(gpus),
        "disable_log_stats": True,
    }
    if settings.max_model_len is not None:
        values["max_model_len"] = settings.max_model_len
    if "max_num_seqs" in explicit:
        values["max_num_seqs"] = settings.max_num_seqs
    if gpus == 0:
        # vLLM's CPU backend: float32 (KServe's "auto" on the CPU, as in
        # worker-hf), no graph capture (start-up twice as fast), and a KV
        # cache that fits beside other processes.
        values["dtype"] = "float32" if settings.dtype == "auto" else settings.dtype
        values["enforce_eager"] = True
        values["gpu_memory_utilization"] = CPU_MEMORY_UTILIZATION
    else:
        values["dtype"] = settings.dtype
    # Constrained decoding with xgrammar, as worker-hf, and JSON without free
    # whitespace: a model cannot stall in endless blanks inside a forced call
    # or a schema. --structured-outputs-config overrides both.
    values["structured_outputs_config"] = StructuredOutputsConfig(
        backend="xgrammar", disable_any_whitespace=True
    )
    values.update(settings.engine_flags)
    if values["tensor_parallel_size"] < 1:
        raise StartupError(f"--tensor-parallel-size must be at least 1, got {values['tensor_parallel_size']}")
    try:
        return AsyncEngineArgs(**values)
    except (TypeError, ValueError) as exc:
        raise StartupError(f"invalid vLLM engine arguments: {exc}") from exc
