"""Tabular models through the router: real worker-tabular processes serving
XGBoost (binary classifier, 3-class classifier, regressor; model.json,
model.ubj and model.bst), LightGBM and scikit-learn models trained here,
called over KServe v1 and v2 and the OpenAI SDK. Predictions equal the
library's own on the same rows; bad rows are 400s in KServe's shape."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import requests
from harness.processes import stop_all
from harness.stack import Stack, Worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services" / "worker-tabular" / "tests"))

from tabular_models import BuiltModel, build_all  # noqa: E402

XGB = [f"xgb-{kind}-{fmt}" for kind in ("binary", "reg") for fmt in ("json", "ubj", "bst")]
SERVED = [*XGB, "xgb-multi-ubj", "lgb-multi", "sk-pipeline", "sk-ridge"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltModel]:
    return build_all(tmp_path_factory.mktemp("tabular"))


def _command(name: str, folder: Path) -> list[str]:
    return [
        sys.executable, "-m", "infergate_worker_tabular",
        "--model_name", name, "--model_dir", str(folder), "--nthread", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tabular(stack: Stack, built: dict[str, BuiltModel]) -> Iterator[dict[str, Worker]]:
    """One worker per model, started side by side."""
    launched = {name: stack.launch_worker(name, _command(name, built[name].folder)) for name in SERVED}
    try:
        for worker in launched.values():
            stack.wait_worker(worker, timeout_s=120)
        yield launched
    finally:
        stop_all([worker.process for worker in launched.values()])
        for name, worker in launched.items():
            stack.stop_worker(worker)
            stack.forget_model(name)


def _v1(stack: Stack, name: str, body: Any) -> requests.Response:
    return requests.post(f"{stack.router_url}/v1/models/{name}:predict", json=body, timeout=30)


def _v2(stack: Stack, name: str, body: Any) -> requests.Response:
    return requests.post(f"{stack.router_url}/v2/models/{name}/infer", json=body, timeout=30)


def _rows_json(rows: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in rows]


def _assert_equal(got: Any, expected: np.ndarray) -> None:
    if expected.dtype.kind in "OU":
        assert got == expected.tolist()
    else:
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), expected, rtol=1e-6)


@pytest.mark.parametrize("name", SERVED)
def test_v1_and_v2_equal_the_library(
    stack: Stack, tabular: dict[str, Worker], built: dict[str, BuiltModel], name: str
) -> None:
    model = built[name]
    expected = model.expected(model.rows)

    v1 = _v1(stack, name, {"instances": _rows_json(model.rows)})
    assert v1.status_code == 200, v1.text
    _assert_equal(v1.json()["predictions"], expected)

    # v2: any input name; a missing value as NaN, which Python's JSON writes and reads.
    tensor = {
        "name": "features",
        "shape": list(model.rows.shape),
        "datatype": "FP64",
        "data": model.rows.tolist(),
    }
    v2 = requests.post(
        f"{stack.router_url}/v2/models/{name}/infer",
        data=json.dumps({"inputs": [tensor]}),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert v2.status_code == 200, v2.text
    output = v2.json()["outputs"][0]
    assert output["name"] == "output-0"
    assert output["shape"] == list(expected.shape)
    flat = expected.reshape(-1)
    _assert_equal(output["data"], flat)


def test_v2_metadata_and_model_lists(stack: Stack, tabular: dict[str, Worker]) -> None:
    meta = requests.get(f"{stack.router_url}/v2/models/xgb-multi-ubj", timeout=10).json()
    assert meta["platform"] == "infergate/xgboost"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 6]}]
    assert meta["outputs"] == [{"name": "output-0", "datatype": "FP32", "shape": [-1, 3]}]
    meta = requests.get(f"{stack.router_url}/v2/models/sk-pipeline", timeout=10).json()
    assert meta["platform"] == "infergate/sklearn"
    assert meta["outputs"] == [{"name": "output-0", "datatype": "BYTES", "shape": [-1]}]
    meta = requests.get(f"{stack.router_url}/v2/models/lgb-multi", timeout=10).json()
    assert meta["outputs"] == [{"name": "output-0", "datatype": "FP64", "shape": [-1, 3]}]
    assert requests.get(f"{stack.router_url}/v2/models/lgb-multi/ready", timeout=10).status_code == 200

    assert set(SERVED) <= set(requests.get(f"{stack.router_url}/v1/models", timeout=10).json()["models"])
    cards = {m["id"]: m for m in requests.get(f"{stack.openai_url}/models", timeout=10).json()["data"]}
    assert cards["xgb-binary-ubj"]["task"] == "tabular"
    assert cards["xgb-binary-ubj"]["backend"] == "xgboost"


def test_predict_proba_and_raw_margin_parameters(
    stack: Stack, tabular: dict[str, Worker], built: dict[str, BuiltModel]
) -> None:
    sk = built["sk-pipeline"]
    v1 = _v1(stack, "sk-pipeline", {"instances": _rows_json(sk.rows), "parameters": {"predict_proba": True}})
    assert v1.status_code == 200, v1.text
    _assert_equal(v1.json()["predictions"], sk.expected(sk.rows, proba=True))

    xgb = built["xgb-multi-ubj"]
    tensor = {
        "name": "x",
        "shape": list(xgb.rows.shape),
        "datatype": "FP32",
        "data": np.nan_to_num(xgb.rows).tolist(),
        "parameters": {"raw_margin": True},
    }
    v2 = _v2(stack, "xgb-multi-ubj", {"inputs": [tensor]})
    assert v2.status_code == 200, v2.text
    expected = xgb.expected(np.nan_to_num(xgb.rows), margin=True)
    _assert_equal(v2.json()["outputs"][0]["data"], expected.reshape(-1))


V1_BAD = [
    ({"instances": [[0.1] * 5]}, "expected 6 features per row, got 5"),
    (
        {"instances": [[0.1] * 6, [0.2] * 5]},
        "'instances.1': 5 values, but instances.0 has 6: every row needs the same number of features",
    ),
    ({"instances": [[0.1] * 5 + ["abc"]]}, "'instances.0.5': expected a number or null, got 'abc'"),
    ({"instances": [[0.1] * 5 + [True]]}, "'instances.0.5': expected a number or null, got True"),
    ({"instances": [0.1] * 6}, "'instances.0': expected a row (a list of numbers) per instance, got float"),
    ({"instances": ["some text"]}, "'instances.0': expected a row (a list of numbers) per instance, got str"),
]


@pytest.mark.parametrize(("body", "message"), V1_BAD)
def test_v1_bad_rows_are_400(stack: Stack, tabular: dict[str, Worker], body: Any, message: str) -> None:
    response = _v1(stack, "xgb-binary-json", body)
    assert response.status_code == 400
    assert response.json() == {"error": message}


def test_v1_infinity_and_missing_values(stack: Stack, tabular: dict[str, Worker]) -> None:
    response = requests.post(
        f"{stack.router_url}/v1/models/xgb-binary-json:predict",
        data='{"instances": [[0.1, 0.2, Infinity, 0.4, 0.5, 0.6]]}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json() == {"error": "'instances.0.2': inf is not a finite number"}
    response = _v1(stack, "sk-pipeline", {"instances": [[0.1, None, 0.3, 0.4, 0.5, 0.6]]})
    assert response.status_code == 400
    assert response.json()["error"].startswith(
        "row 0, feature 1: a missing value (null or NaN), but this model"
    )
    # The imputing pipeline takes it.
    assert _v1(stack, "sk-ridge", {"instances": [[0.1, None, 0.3, 0.4, 0.5, 0.6]]}).status_code == 200


def _tensor(**changes: Any) -> dict[str, Any]:
    return {"name": "input-0", "shape": [2, 6], "datatype": "FP32", "data": [0.5] * 12, **changes}


V2_BAD = [
    (
        {"inputs": [_tensor(datatype="BYTES")]},
        "input input-0 has datatype BYTES: a tabular model takes a numeric tensor "
        "(FP16, FP32, FP64, INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32)",
    ),
    (
        {"inputs": [_tensor(shape=[2, 5])]},
        "input input-0 has shape [2, 5], which holds 10 values, but its data has 12",
    ),
    (
        {"inputs": [_tensor(shape=[12])]},
        "input input-0 has shape [12]: expected [rows, features] with both at least 1",
    ),
    ({"inputs": [_tensor(shape=[3, 4])]}, "expected 6 features per row, got 4"),
    (
        {"inputs": [_tensor(datatype="INT64", data=[1] * 11 + [1.5])]},
        "'inputs.input-0.data[1][5]': 1.5 is not an integer",
    ),
    (
        {"inputs": [_tensor(data=[0.5] * 11 + ["x"])]},
        "'inputs.input-0.data[1][5]': expected a number or null, got 'x'",
    ),
    (
        {"inputs": [_tensor(), _tensor(name="other")]},
        "a tabular model takes one input tensor of shape [rows, features], got 2",
    ),
    (
        {"inputs": [_tensor()], "parameters": {"predict_proba": True}},
        "predict_proba is not available for this xgboost model (its output already is what the "
        "objective gives: probabilities for a classifier)",
    ),
]


@pytest.mark.parametrize(("body", "message"), V2_BAD)
def test_v2_bad_tensors_are_400(stack: Stack, tabular: dict[str, Worker], body: Any, message: str) -> None:
    response = _v2(stack, "xgb-binary-ubj", body)
    assert response.status_code == 400
    assert response.json() == {"error": message}


def test_v2_nested_and_integer_data(
    stack: Stack, tabular: dict[str, Worker], built: dict[str, BuiltModel]
) -> None:
    rows = np.arange(12).reshape(2, 6)
    nested = _v2(stack, "xgb-reg-json", {"inputs": [_tensor(datatype="INT64", data=rows.tolist())]})
    assert nested.status_code == 200, nested.text
    _assert_equal(nested.json()["outputs"][0]["data"], built["xgb-reg-json"].expected(rows.astype(float)))


def test_openai_routes_refuse_a_tabular_model(stack: Stack, tabular: dict[str, Worker]) -> None:
    client = openai.OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="xgb-binary-ubj", messages=[{"role": "user", "content": "hi"}])
    message = info.value.body["message"]  # type: ignore[index]
    assert message.startswith(
        "Model xgb-binary-ubj is a tabular model and does not support /chat/completions."
    )
    assert "/v1/models/<name>:predict" in message
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="xgb-binary-ubj", input="hi")
    assert "is a tabular model and does not support /embeddings" in info.value.body["message"]  # type: ignore[index]


def _binary_infer(stack: Stack, name: str, tensors: list[tuple[dict[str, Any], bytes]]) -> requests.Response:
    """v2 with the binary tensor data extension: JSON header, then raw values."""
    inputs = [{**meta, "parameters": {"binary_data_size": len(raw)}} for meta, raw in tensors]
    header = json.dumps({"inputs": inputs}).encode()
    return requests.post(
        f"{stack.router_url}/v2/models/{name}/infer",
        data=header + b"".join(raw for _, raw in tensors),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
        timeout=30,
    )


@pytest.mark.parametrize("dtype", ["FP32", "FP64"])
def test_v2_binary_tensor_data(
    stack: Stack, tabular: dict[str, Worker], built: dict[str, BuiltModel], dtype: str
) -> None:
    model = built["xgb-multi-ubj"]
    rows = model.rows.astype(np.float32 if dtype == "FP32" else np.float64)
    meta = {"name": "x", "shape": list(rows.shape), "datatype": dtype}
    response = _binary_infer(stack, "xgb-multi-ubj", [(meta, rows.tobytes())])
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["shape"] == [9, 3]
    _assert_equal(output["data"], model.expected(rows.astype(np.float64)).reshape(-1))


def test_v2_binary_tensor_data_errors(stack: Stack, tabular: dict[str, Worker]) -> None:
    rows = np.zeros((2, 6), dtype=np.float32)
    meta = {"name": "x", "shape": [2, 6], "datatype": "FP32"}
    # Declares 48 bytes, sends 40.
    inputs = [{**meta, "parameters": {"binary_data_size": 48}}]
    header = json.dumps({"inputs": inputs}).encode()
    response = requests.post(
        f"{stack.router_url}/v2/models/xgb-binary-ubj/infer",
        data=header + rows.tobytes()[:40],
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "inputs.0.parameters.binary_data_size is 48, but 40 bytes of binary data are left"
    }
    # Values for 2 x 5 under a [2, 6] shape.
    response = _binary_infer(stack, "xgb-binary-ubj", [(meta, rows[:, :5].tobytes())])
    assert response.status_code == 400
    assert response.json() == {
        "error": "input x has shape [2, 6], which holds 12 values, but its data has 10"
    }
    response = _binary_infer(stack, "xgb-binary-ubj", [({**meta, "datatype": "BYTES"}, b"\x00" * 8)])
    assert response.status_code == 400
    assert response.json()["error"].startswith("input x: binary data of datatype BYTES is not supported")
