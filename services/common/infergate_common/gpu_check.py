"""Was this pod given a GPU, and can the process use it?

On Kubernetes the NVIDIA device plugin hands a container its GPUs through
``NVIDIA_VISIBLE_DEVICES`` and ``/dev/nvidia<N>`` device files. A worker
that sees either but finds no usable CUDA device (wrong image: the CPU build
of torch; a driver or runtime-class problem) would otherwise serve on the
CPU beside an idle GPU: :func:`unusable_gpu_reason` says why, so the worker
logs it loudly and reports it in ``/info``; ``--device cuda`` turns it into
a start-up error.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping

# Values of NVIDIA_VISIBLE_DEVICES that give no device.
_NO_DEVICES = {"", "void", "none"}


def gpu_assigned(
    environ: Mapping[str, str] | None = None, device_files: Callable[[], list[str]] | None = None
) -> str:
    """What shows that the pod was given a GPU ('' when nothing does)."""
    env = os.environ if environ is None else environ
    visible = env.get("NVIDIA_VISIBLE_DEVICES", "").strip().lower()
    if visible not in _NO_DEVICES:
        return f"NVIDIA_VISIBLE_DEVICES={visible}"
    found = (device_files or _nvidia_device_files)()
    if found:
        return f"device files {', '.join(sorted(found))}"
    return ""


def _nvidia_device_files() -> list[str]:
    return [path for path in glob.glob("/dev/nvidia[0-9]*") if path[len("/dev/nvidia") :].isdigit()]


def unusable_gpu_reason(
    cuda_available: bool,
    cuda_error: str = "",
    environ: Mapping[str, str] | None = None,
    device_files: Callable[[], list[str]] | None = None,
) -> str:
    """'' when there is no GPU or it is usable; else one sentence for the log and ``/info``."""
    assigned = gpu_assigned(environ, device_files)
    if not assigned or cuda_available:
        return ""
    detail = f" ({cuda_error})" if cuda_error else ""
    return (
        f"this pod was given a GPU ({assigned}) but CUDA is not usable here{detail}: "
        "the model runs on the CPU. Use the image's CUDA build (worker-hf:<tag>-cuda) and a node "
        "with the NVIDIA driver, or pass --device cuda to make this a start-up error."
    )
