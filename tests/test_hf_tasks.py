"""worker-hf's non-generative tasks through the real router, on KServe v1
and v2 (and the OpenAI error shape where a task does not apply): sequence
classification, token classification and fill mask with the small models.
The router's answers must equal the worker's own ``/encode`` output."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import worker_hf
from harness.processes import stop_all
from harness.stack import Stack, Worker

SENTIMENT = {"negative", "neutral", "positive"}
TEXTS = ["the cat sat on the mat", "a dog ran in the park today"]


@pytest.fixture(scope="module")
def encoders(stack: Stack, test_models: Path) -> Iterator[dict[str, Worker]]:
    launched = {
        name: stack.launch_worker(name, worker_hf(name, test_models / folder))
        for name, folder in (
            ("classifier", "tiny-bert-classifier"),
            ("ner", "tiny-bert-ner"),
            ("mlm", "tiny-bert-mlm"),
        )
    }
    try:
        for worker in launched.values():
            stack.wait_worker(worker, timeout_s=180)
        yield launched
    finally:
        stop_all([worker.process for worker in launched.values()])
        for worker in launched.values():
            stack.stop_worker(worker)
            stack.forget_model(worker.name)


def direct_encode(worker: Worker, inputs: list[str], **flags: Any) -> dict[str, Any]:
    body = {"request_id": uuid.uuid4().hex, "inputs": inputs, **flags}
    response = requests.post(f"{worker.url}/encode", json=body, headers=worker.headers, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def v1(stack: Stack, model: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{stack.router_url}/v1/models/{model}:predict", json=body, timeout=30)


def v2(stack: Stack, model: str, texts: list[str], **parameters: Any) -> requests.Response:
    body: dict[str, Any] = {
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    }
    if parameters:
        body["parameters"] = parameters
    return requests.post(f"{stack.router_url}/v2/models/{model}/infer", json=body, timeout=30)


def test_classifier_v1_indexes_probabilities_and_labels(stack: Stack, encoders: dict[str, Worker]) -> None:
    indexes = v1(stack, "classifier", {"instances": TEXTS})
    assert indexes.status_code == 200, indexes.text
    predictions = indexes.json()["predictions"]
    assert predictions == direct_encode(encoders["classifier"], TEXTS)["predictions"]
    assert all(isinstance(p, int) and 0 <= p < 3 for p in predictions)

    probs = v1(stack, "classifier", {"instances": TEXTS, "parameters": {"return_probabilities": True}})
    assert probs.status_code == 200, probs.text
    for row, index in zip(probs.json()["predictions"], predictions, strict=True):
        assert set(row) == {"0", "1", "2"}
        assert math.isclose(sum(row.values()), 1.0, abs_tol=1e-3)
        assert max(row, key=row.get) == str(index)

    labels = v1(stack, "classifier", {"inputs": TEXTS, "parameters": {"return_labels": True}})
    assert labels.status_code == 200, labels.text
    assert set(labels.json()["predictions"]) <= SENTIMENT


def test_classifier_v2_is_an_int64_tensor(stack: Stack, encoders: dict[str, Worker]) -> None:
    answer = v2(stack, "classifier", TEXTS)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "classifier"
    (output,) = body["outputs"]
    assert (output["datatype"], output["shape"]) == ("INT64", [2])
    assert output["data"] == direct_encode(encoders["classifier"], TEXTS)["predictions"]


def test_exclusive_output_flags_are_a_kserve_400(stack: Stack, encoders: dict[str, Worker]) -> None:
    both = {"return_probabilities": True, "return_raw_logits": True}
    answer = v1(stack, "classifier", {"instances": TEXTS, "parameters": both})
    assert answer.status_code == 400
    assert isinstance(answer.json()["error"], str)


def test_token_classification_keeps_kserve_nested_shape(stack: Stack, encoders: dict[str, Worker]) -> None:
    answer = v1(stack, "ner", {"instances": TEXTS})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert predictions == direct_encode(encoders["ner"], TEXTS)["predictions"]
    assert len(predictions) == 2
    for per_input in predictions:
        assert len(per_input) == 1
        assert all(isinstance(label, int) and 0 <= label < 5 for label in per_input[0])

    tensor = v2(stack, "ner", TEXTS)
    assert tensor.status_code == 200, tensor.text
    (output,) = tensor.json()["outputs"]
    assert output["datatype"] == "INT64"
    assert output["shape"][:2] == [2, 1]


def test_fill_mask_decodes_each_mask_and_refuses_inputs_without_one(
    stack: Stack, encoders: dict[str, Worker]
) -> None:
    texts = ["the capital of france is [MASK] .", "the [MASK] sat on the mat"]
    answer = v1(stack, "mlm", {"instances": texts})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert predictions == direct_encode(encoders["mlm"], texts)["predictions"]
    assert all(isinstance(p, str) and p for p in predictions)

    tensor = v2(stack, "mlm", texts)
    assert tensor.status_code == 200, tensor.text
    (output,) = tensor.json()["outputs"]
    assert (output["datatype"], output["shape"], output["data"]) == ("BYTES", [2], predictions)

    missing = v1(stack, "mlm", {"instances": ["no mask in this one"]})
    assert missing.status_code == 400
    assert "mask" in missing.json()["error"].lower()


def test_openai_routes_refuse_encoders_in_openai_shape(stack: Stack, encoders: dict[str, Worker]) -> None:
    chat = requests.post(
        f"{stack.router_url}/openai/v1/chat/completions",
        json={"model": "classifier", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert 400 <= chat.status_code < 600 and chat.status_code != 500, chat.text
    error = chat.json()["error"]
    assert error["message"] and error["type"]
    listed = requests.get(f"{stack.router_url}/openai/v1/models", timeout=10).json()["data"]
    tasks = {model["id"]: model["task"] for model in listed}
    assert tasks["classifier"] == "sequence_classification"
    assert tasks["ner"] == "token_classification"
    assert tasks["mlm"] == "fill_mask"
