"""Which runtime serves a model: KServe's rule, with its faults fixed.

``auto``: vLLM when vLLM imports, every entry of ``config.architectures`` is
in vLLM's model registry and the task is one this worker serves with vLLM;
otherwise transformers. ``huggingface``: transformers. ``vllm``: vLLM, and a
StartupError naming the architecture when it cannot (KServe fell back
silently). The reason is kept for the logs, ``/info`` and the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from infergate_common.errors import StartupError
from infergate_common.worker_api import Backend, Task

# Tasks served through vLLM; the others always run on transformers.
VLLM_TASKS: tuple[Task, ...] = (Task.TEXT_GENERATION,)


@dataclass(frozen=True)
class BackendChoice:
    backend: Backend
    reason: str


def vllm_supported_architectures() -> frozenset[str] | str:
    """vLLM's registered architectures, or why vLLM cannot be used here."""
    try:
        from vllm.model_executor.models import ModelRegistry
    except Exception as exc:  # not installed, or broken (missing CUDA libraries, ...)
        return f"vLLM does not import ({type(exc).__name__}: {exc})"
    return frozenset(ModelRegistry.get_supported_archs())


def _why_not_vllm(architectures: list[str], task: Task) -> str | None:
    if task not in VLLM_TASKS:
        served = ", ".join(t.value for t in VLLM_TASKS)
        return f"task {task.value} is not served by the vLLM backend (it serves {served})"
    if not architectures:
        return "the model config names no architectures"
    supported = vllm_supported_architectures()
    if isinstance(supported, str):
        return supported
    missing = [arch for arch in architectures if arch not in supported]
    if missing:
        return f"architecture {', '.join(missing)} is not in vLLM's model registry"
    return None


def choose_backend(requested: str, architectures: list[str], task: Task) -> BackendChoice:
    names = ", ".join(architectures) or "unknown"
    if requested == "huggingface":
        return BackendChoice(Backend.HUGGINGFACE, "--backend huggingface asked")
    why_not = _why_not_vllm(architectures, task)
    if requested == "vllm":
        if why_not is not None:
            raise StartupError(f"--backend vllm cannot serve {names}: {why_not}")
        return BackendChoice(Backend.VLLM, f"--backend vllm asked; vLLM supports {names}")
    if requested != "auto":
        raise StartupError(f"--backend must be auto, vllm or huggingface, not {requested!r}")
    if why_not is not None:
        return BackendChoice(Backend.HUGGINGFACE, f"auto: transformers, because {why_not}")
    return BackendChoice(Backend.VLLM, f"auto: vLLM supports {names} for {task.value}")
