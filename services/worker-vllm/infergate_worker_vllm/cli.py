"""The launcher: ``python -m infergate_worker_vllm --backend auto|vllm|huggingface
--model_id DIR [KServe flags] [vLLM engine flags] --port P ...``.

It reads KServe's arguments with worker-hf's parser, infers the task with
worker-hf's rules, chooses the backend (:mod:`.backend_choice`), then serves
either vLLM here or worker-hf in this same process. Every flag worker-hf does
not know is a vLLM engine flag, checked against vLLM's own parser.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from infergate_common import worker_metrics
from infergate_common.errors import StartupError
from infergate_common.gpu_check import unusable_gpu_reason
from infergate_common.logs import configure_logging
from infergate_common.settings import load_settings
from infergate_common.worker_api import Backend
from infergate_common.worker_runner import run_worker
from infergate_worker_hf.cli import build_parser
from infergate_worker_hf.loading import check_max_model_len, load_config
from infergate_worker_hf.task_inference import infer_task

from .backend_choice import BackendChoice, choose_backend
from .settings import VllmWorkerSettings

log = logging.getLogger("infergate_worker_vllm")


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_args(argv: Sequence[str]) -> tuple[VllmWorkerSettings, list[str]]:
    """The settings (environment, overridden by flags) and the flags left
    for vLLM's engine."""
    args, rest = build_parser().parse_known_args(list(argv))
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--exit_after_engine_death_s", "--exit-after-engine-death-s", type=float, default=None)
    own_args, engine_argv = own.parse_known_args(rest)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    overrides.update({key: value for key, value in vars(own_args).items() if value is not None})
    try:
        return load_settings(VllmWorkerSettings, **overrides), engine_argv
    except StartupError as exc:
        if isinstance(exc.__cause__, ValidationError):
            raise StartupError(_one_line(exc.__cause__)) from exc
        raise


def decide(settings: VllmWorkerSettings) -> tuple[BackendChoice, str | None]:
    """The backend for the model and its first architecture."""
    config = load_config(settings)
    task = infer_task(config, settings.model_path(), settings.task)
    check_max_model_len(settings, config)
    architectures = [str(arch) for arch in (getattr(config, "architectures", None) or [])]
    choice = choose_backend(settings.backend, architectures, task)
    return choice, architectures[0] if architectures else None


def serve_vllm(
    settings: VllmWorkerSettings, engine_argv: list[str], choice: BackendChoice, arch: str | None
) -> int:
    from .engine import VllmEngine
    from .engine_args import parse_engine_flags, resolve_engine_args, visible_gpu_count

    if os.environ.get("ALLOW_LONG_MAX_MODEL_LEN") == "1":
        # KServe's escape for a context above the model's lets vLLM through too.
        os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    settings.engine_flags = parse_engine_flags(engine_argv)
    gpus = visible_gpu_count()
    unusable = unusable_gpu_reason(cuda_available=gpus > 0)
    worker_metrics.GPU_UNUSABLE.labels(model=settings.model_name).set(1 if unusable else 0)
    if unusable:
        if settings.device and settings.device.startswith("cuda"):
            raise StartupError(f"--device {settings.device} asked but CUDA is not available: {unusable}")
        log.warning("GPU UNUSABLE: %s", unusable, extra={"gpu_unusable": unusable})
    engine_args = resolve_engine_args(settings, gpus)
    engine = VllmEngine(settings, engine_args, choice, arch, device="cuda" if gpus else "cpu")
    engine.gpu_unusable = unusable
    return run_worker(engine, settings)


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging("worker-vllm")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings, engine_argv = parse_args(argv)
        choice, arch = decide(settings)
        log.info(
            "backend chosen",
            extra={"backend": choice.backend.value, "reason": choice.reason, "architecture": arch},
        )
        if choice.backend is Backend.VLLM:
            return serve_vllm(settings, engine_argv, choice, arch)
    except StartupError as exc:
        print(f"worker-vllm: error: {exc.message}", file=sys.stderr)
        return 2
    from infergate_worker_hf.__main__ import main as worker_hf_main

    return worker_hf_main([*argv, "--backend_reason", choice.reason])
