"""KServe v1 and v2 through the router: metadata, health, predict and
infer for encoder and generative models, streaming v1."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskClient
from payloads import assert_golden, sse_payloads


def test_alive(client: FlaskClient) -> None:
    assert client.get("/").get_json() == {"status": "alive"}


def test_v1_models_and_readiness(client: FlaskClient) -> None:
    assert {"null", "embed"} <= set(client.get("/v1/models").get_json()["models"])
    assert client.get("/v1/models/embed").get_json() == {"name": "embed", "ready": True}


def test_v1_predict_encoder(client: FlaskClient) -> None:
    payload = client.post("/v1/models/embed:predict", json={"instances": ["a b", "c"]}).get_json()
    assert_golden("v1_predict_embed", payload)
    inputs = client.post("/v1/models/embed:predict", json={"inputs": ["a b"]}).get_json()
    assert inputs["predictions"] == payload["predictions"][:1]


def test_v1_predict_refuses_both_or_neither_input_key(client: FlaskClient) -> None:
    both = client.post("/v1/models/embed:predict", json={"instances": ["a"], "inputs": ["b"]})
    assert both.status_code == 400 and "exactly one" in both.get_json()["error"]
    assert client.post("/v1/models/embed:predict", json={}).status_code == 400
    assert client.post("/v1/models/embed:predict", json={"instances": [3]}).status_code == 400
    bad = client.post(
        "/v1/models/embed:predict", json={"instances": ["a"], "parameters": {"return_labels": "y"}}
    )
    assert bad.status_code == 400 and "parameters.return_labels" in bad.get_json()["error"]


def test_v1_predict_generative(client: FlaskClient) -> None:
    body = {
        "instances": ["hello", {"prompt": "bye", "parameters": {"max_tokens": 2}}],
        "parameters": {"max_tokens": 3},
    }
    payload = client.post("/v1/models/null:predict", json=body).get_json()
    assert payload == {"predictions": ["tok0 tok1 tok2 ", "tok0 tok1 "]}


def test_v1_predict_generative_stream(client: FlaskClient) -> None:
    body = {"instances": ["hello"], "parameters": {"max_tokens": 3, "stream": True}}
    response = client.post("/v1/models/null:predict", json=body)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    payloads = sse_payloads(response.get_data(as_text=True))
    assert_golden("v1_predict_stream", payloads)
    top_level = client.post("/v1/models/null:predict", json={"instances": ["x"], "stream": True})
    assert sse_payloads(top_level.get_data(as_text=True))[-1] == "[DONE]"


def test_v2_server_routes(client: FlaskClient) -> None:
    meta = client.get("/v2").get_json()
    assert meta["name"] == "infergate" and "version" in meta
    assert client.get("/v2/health/live").get_json() == {"live": True}


def test_v2_model_metadata_and_ready(client: FlaskClient) -> None:
    meta = client.get("/v2/models/embed").get_json()
    assert meta["name"] == "embed"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][0]["datatype"] == "FP32"
    assert client.get("/v2/models/embed/ready").get_json() == {"name": "embed", "ready": True}


def _infer_body(data: list[Any], shape: list[int] | None = None, datatype: str = "BYTES") -> dict[str, Any]:
    return {
        "id": "req-1",
        "inputs": [{"name": "input-0", "shape": shape or [len(data)], "datatype": datatype, "data": data}],
    }


def test_v2_infer_encoder(client: FlaskClient) -> None:
    payload = client.post("/v2/models/embed/infer", json=_infer_body(["a", "b c"])).get_json()
    assert_golden("v2_infer_embed", payload)
    output = payload["outputs"][0]
    assert output["shape"] == [2, 8] and len(output["data"]) == 16


def test_v2_infer_generative(client: FlaskClient) -> None:
    body = {**_infer_body(["a", "b"]), "parameters": {"max_tokens": 2}}
    payload = client.post("/v2/models/null/infer", json=body).get_json()
    assert payload["outputs"] == [
        {
            "name": "output-0",
            "shape": [2],
            "datatype": "BYTES",
            "parameters": None,
            "data": ["tok0 tok1 ", "tok0 tok1 "],
        }
    ]
    assert payload["id"] == "req-1" and payload["model_version"] is None


def test_v2_infer_validates_the_tensor(client: FlaskClient) -> None:
    wrong_type = client.post("/v2/models/embed/infer", json=_infer_body(["a"], datatype="FP32"))
    assert wrong_type.status_code == 400 and "BYTES" in wrong_type.get_json()["error"]
    wrong_shape = client.post("/v2/models/embed/infer", json=_infer_body(["a", "b"], shape=[3]))
    assert wrong_shape.status_code == 400 and "shape" in wrong_shape.get_json()["error"]
    no_inputs = client.post("/v2/models/embed/infer", json={"inputs": []})
    assert no_inputs.status_code == 400
    assert json.loads(no_inputs.get_data())["error"].startswith("'inputs'")
