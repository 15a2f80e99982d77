"""Fixtures of worker-vllm's own tests (run with ``.venv-vllm/bin/python -m
pytest``). The engine itself is exercised through the router in the
repository's ``tests/test_vllm_*.py``; these tests cover the parts around it
and the launcher's start-up decisions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def test_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """worker-hf's small random-weight models (tiny-llama, tiny-bert-classifier, ...)."""
    out = tmp_path_factory.mktemp("models")
    subprocess.run(
        [sys.executable, "-m", "infergate_worker_hf.testmodels", "--out", str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    return out


@pytest.fixture(scope="session")
def tiny_llama_tokenizer(test_models: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(test_models / "tiny-llama")
