"""The launcher's backend choice, seen where users see it: the registry and
``/openai/v1/models`` through the router. The transformers fallback runs in
worker-vllm's own environment, as it does in its image. (``--backend vllm``
with an unsupported model failing at start is in
services/worker-vllm/tests/test_launcher.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from harness.stack import Stack, Worker
from test_vllm_serving import vllm_worker_cmd

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def listed(stack: Stack, name: str) -> dict[str, Any]:
    models = requests.get(f"{stack.openai_url}/models", timeout=10).json()["data"]
    return next(model for model in models if model["id"] == name)


def test_auto_serves_a_bert_classifier_with_transformers(
    stack: Stack, start_worker: Callable[..., Worker], test_models: Path
) -> None:
    cmd = vllm_worker_cmd("vllm-auto-bert", test_models / "tiny-bert-classifier")
    worker = start_worker("vllm-auto-bert", cmd, timeout_s=240)
    entry = listed(stack, "vllm-auto-bert")
    assert entry["backend"] == "huggingface"
    assert entry["backend_reason"].startswith("auto: transformers")
    assert "sequence_classification" in entry["backend_reason"]
    info = requests.get(f"{worker.url}/info", timeout=10).json()
    assert (info["backend"], info["backend_reason"]) == ("huggingface", entry["backend_reason"])
    url = f"{stack.router_url}/v1/models/vllm-auto-bert:predict"
    prediction = requests.post(url, json={"instances": ["hello there"]}, timeout=30)
    assert prediction.status_code == 200, prediction.text
    assert len(prediction.json()["predictions"]) == 1


def test_backend_huggingface_forces_transformers_for_a_vllm_model(
    stack: Stack, start_worker: Callable[..., Worker], test_models: Path
) -> None:
    cmd = vllm_worker_cmd("vllm-forced-hf", test_models / "tiny-llama", "--backend", "huggingface")
    start_worker("vllm-forced-hf", cmd, timeout_s=240)
    entry = listed(stack, "vllm-forced-hf")
    assert entry["backend"] == "huggingface"
    assert entry["backend_reason"] == "--backend huggingface asked"
    completion = requests.post(
        f"{stack.openai_url}/completions",
        json={"model": "vllm-forced-hf", "prompt": "hello", "max_tokens": 4, "temperature": 0},
        timeout=60,
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["choices"][0]["finish_reason"] in ("length", "stop")
