"""The launcher's start-up errors: non-zero exit and one clear line, before
any engine starts (the backends it chooses are tested through the router in
tests/test_vllm_backend_choice.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def launch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infergate_worker_vllm", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("worker-vllm: error:")]


def test_backend_vllm_with_an_unsupported_model_fails_naming_the_architecture(test_models: Path) -> None:
    result = launch("--backend", "vllm", "--model_id", str(test_models / "tiny-bert-classifier"))
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "--backend vllm cannot serve BertForSequenceClassification" in line


def test_unknown_engine_flag_fails_naming_it(test_models: Path) -> None:
    result = launch(
        "--backend", "vllm", "--model_id", str(test_models / "tiny-llama"), "--no-such-engine-flag", "1"
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "--no-such-engine-flag" in line


def test_context_longer_than_the_model_fails(test_models: Path) -> None:
    result = launch("--model_id", str(test_models / "tiny-llama"), "--max_model_len", "100000")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "100000" in line
