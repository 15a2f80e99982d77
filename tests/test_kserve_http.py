"""KServe v1 and v2 over plain HTTP, against worker-hf models."""

from __future__ import annotations

import math

import pytest
import requests
from harness.sse import events
from harness.stack import Stack, Worker

pytestmark = pytest.mark.usefixtures("tiny_llm", "minilm")


def test_root_is_alive(stack: Stack) -> None:
    assert requests.get(f"{stack.router_url}/", timeout=10).json() == {"status": "alive"}


def test_v1_lists_and_describes_models(stack: Stack) -> None:
    listed = requests.get(f"{stack.router_url}/v1/models", timeout=10).json()
    assert {"tiny-llm", "minilm"} <= set(_names(listed["models"]))
    model = requests.get(f"{stack.router_url}/v1/models/tiny-llm", timeout=10)
    assert model.status_code == 200
    assert model.json()["name"] == "tiny-llm"
    assert model.json()["ready"] is True


def _names(models: list[object]) -> list[str]:
    return [m if isinstance(m, str) else m["name"] for m in models]  # type: ignore[index]


def test_v1_unknown_model_is_404_in_kserve_shape(stack: Stack) -> None:
    response = requests.post(
        f"{stack.router_url}/v1/models/nope:predict", json={"instances": ["x"]}, timeout=10
    )
    assert response.status_code == 404
    assert response.json() == {"error": "Model with name nope does not exist."}


def test_v1_malformed_body_is_400(stack: Stack) -> None:
    response = requests.post(
        f"{stack.router_url}/v1/models/minilm:predict",
        data="{not json",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


def test_v1_predict_embeddings(stack: Stack) -> None:
    response = requests.post(
        f"{stack.router_url}/v1/models/minilm:predict",
        json={"instances": ["A man is eating food.", "Stocks fell."]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    assert len(predictions[0]) == 384
    assert math.isclose(math.sqrt(sum(x * x for x in predictions[0])), 1.0, rel_tol=1e-3)


def test_v1_predict_generates(stack: Stack) -> None:
    response = requests.post(
        f"{stack.router_url}/v1/models/tiny-llm:predict",
        json={"instances": ["Hello", "Goodbye"], "parameters": {"max_tokens": 6, "temperature": 0}},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    assert all(isinstance(p, str) for p in predictions)


def test_v1_predict_streams(stack: Stack) -> None:
    parameters = {"max_tokens": 10, "temperature": 0}
    body = {"instances": ["Hello"], "parameters": parameters}
    plain = requests.post(f"{stack.router_url}/v1/models/tiny-llm:predict", json=body, timeout=60).json()
    streamed = {"instances": ["Hello"], "parameters": {**parameters, "stream": True}}
    with requests.post(
        f"{stack.router_url}/v1/models/tiny-llm:predict", json=streamed, stream=True, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        received = list(events(response))
    assert received, "no events"
    ids = [event.id for event in received if event.id]
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
    assert received[-1].done
    *chunks, usage = [event.json() for event in received[:-1]]
    assert all("error" not in chunk for chunk in chunks), chunks
    assert "".join(chunk["text"] for chunk in chunks) == plain["predictions"][0]
    reasons = [chunk["finish_reason"] for chunk in chunks]
    assert all(reason is None for reason in reasons[:-1])
    assert reasons[-1] in ("length", "stop")
    assert 1 <= usage["usage"]["completion_tokens"] <= 10


def test_v2_server_and_health(stack: Stack) -> None:
    server = requests.get(f"{stack.router_url}/v2", timeout=10).json()
    assert "name" in server and "version" in server
    assert requests.get(f"{stack.router_url}/v2/health/live", timeout=10).json()["live"] is True
    ready = requests.get(f"{stack.router_url}/v2/health/ready", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["ready"] is True


def test_v2_model_metadata_and_readiness(stack: Stack) -> None:
    meta = requests.get(f"{stack.router_url}/v2/models/minilm", timeout=10)
    assert meta.status_code == 200
    assert meta.json()["name"] == "minilm"
    assert {"inputs", "outputs", "platform"} <= set(meta.json())
    ready = requests.get(f"{stack.router_url}/v2/models/minilm/ready", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    missing = requests.get(f"{stack.router_url}/v2/models/nope", timeout=10)
    assert missing.status_code == 404
    assert isinstance(missing.json()["error"], str)


def test_v2_infer_embeddings(stack: Stack) -> None:
    body = {
        "id": "req-1",
        "inputs": [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": ["one", "two"]}],
    }
    response = requests.post(f"{stack.router_url}/v2/models/minilm/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "minilm"
    assert answer["id"] == "req-1"
    output = answer["outputs"][0]
    assert output["datatype"] == "FP32"
    assert output["shape"] == [2, 384]
    assert len(output["data"]) == 2 * 384


def test_v2_infer_wrong_type_is_400(stack: Stack) -> None:
    body = {"inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES", "data": "not a list"}]}
    response = requests.post(f"{stack.router_url}/v2/models/minilm/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


def test_v2_infer_generates(stack: Stack, tiny_llm: Worker) -> None:
    body = {
        "inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES", "data": ["Hello"]}],
        "parameters": {"max_tokens": 5},
    }
    response = requests.post(f"{stack.router_url}/v2/models/tiny-llm/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["datatype"] == "BYTES"
    assert len(output["data"]) == 1
    assert isinstance(output["data"][0], str)
