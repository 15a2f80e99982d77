"""Errors through the real router and gunicorn, in each protocol's shape."""

from __future__ import annotations

import pytest
import requests
from conftest import StartWorker
from harness.stack import Stack


@pytest.fixture
def null_model(null_worker: StartWorker) -> str:
    null_worker("null-errors", "--tokens", "2")
    return "null-errors"


def test_malformed_json_is_400_in_openai_shape(stack: Stack, null_model: str) -> None:
    response = requests.post(
        f"{stack.openai_url}/chat/completions",
        data='{"model": "null-errors", "messages": [',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_wrong_type_is_400_with_the_param(stack: Stack, null_model: str) -> None:
    response = requests.post(
        f"{stack.openai_url}/chat/completions",
        json={"model": null_model, "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "max_tokens" in (response.json()["error"]["param"] or response.json()["error"]["message"])


def test_body_too_large_is_413(stack: Stack, null_model: str) -> None:
    prompt = "x" * (9 * 1024 * 1024)
    response = requests.post(
        f"{stack.openai_url}/completions", json={"model": null_model, "prompt": prompt}, timeout=30
    )
    assert response.status_code == 413
    assert response.json()["error"]["message"]


def test_near_miss_path_hints_at_the_base_url(stack: Stack) -> None:
    response = requests.post(f"{stack.router_url}/v1/chat/completions", json={}, timeout=10)
    assert response.status_code == 404
    assert "/openai/v1" in response.text


def test_v1_wrong_instances_type_is_400_in_kserve_shape(stack: Stack, null_model: str) -> None:
    response = requests.post(
        f"{stack.router_url}/v1/models/{null_model}:predict", json={"instances": "not a list"}, timeout=10
    )
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


def test_unknown_model_on_v2_is_404_in_kserve_shape(stack: Stack) -> None:
    body = {"inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    response = requests.post(f"{stack.router_url}/v2/models/nope/infer", json=body, timeout=10)
    assert response.status_code == 404
    assert response.json() == {"error": "Model with name nope does not exist."}
