"""Bad rows on the worker's /predict: each a 400 in the worker API's error
shape that says what was expected, never a 500; the other routes answer 501."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import rows_body
from flask.testing import FlaskClient

ROWS = np.arange(12, dtype=np.float64).reshape(2, 6) / 10


def _error(client: FlaskClient, body: Any) -> dict[str, Any]:
    response = client.post("/predict", json=body)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["type"] == "invalid_request_error"
    return error  # type: ignore[no-any-return]


def test_wrong_feature_count_names_the_features(client_for: Callable[..., FlaskClient]) -> None:
    error = _error(client_for("xgb-binary-ubj"), rows_body(ROWS[:, :4]))
    assert error["message"] == "expected 6 features per row, got 4"
    # A model fitted on named columns lists them.
    error = _error(client_for("lgb-multi"), rows_body(ROWS[:, :5]))
    assert error["message"].startswith("expected 6 features per row (Column_0, Column_1,")
    assert error["message"].endswith("got 5")


def test_shape_and_data_disagree(client_for: Callable[..., FlaskClient]) -> None:
    body = rows_body(ROWS)
    body["data"] = body["data"][:-1]
    error = _error(client_for("xgb-reg-json"), body)
    assert "shape [2, 6] needs 12 values, data has 11" in error["message"]


@pytest.mark.parametrize("value", ["abc", "1.5", True, [1.0], {"x": 1}])
def test_non_numeric_values(client_for: Callable[..., FlaskClient], value: Any) -> None:
    body = rows_body(ROWS)
    body["data"][3] = value
    error = _error(client_for("xgb-reg-json"), body)
    assert error["message"].startswith("data.3")
    assert "valid number" in error["message"]


def test_missing_value_where_the_model_cannot_take_it(client_for: Callable[..., FlaskClient]) -> None:
    rows = ROWS.copy()
    rows[1, 2] = np.nan
    error = _error(client_for("sk-pipeline"), rows_body(rows))
    assert error["message"].startswith("row 1, feature 2: a missing value (null or NaN)")
    assert "needs a number in every feature" in error["message"]
    # XGBoost takes it.
    assert client_for("xgb-binary-json").post("/predict", json=rows_body(rows)).status_code == 200


def test_output_options_the_model_does_not_have(client_for: Callable[..., FlaskClient]) -> None:
    error = _error(client_for("xgb-binary-json"), rows_body(ROWS, predict_proba=True))
    assert error["message"].startswith("predict_proba is not available for this xgboost model")
    error = _error(client_for("sk-ridge"), rows_body(ROWS, raw_margin=True))
    assert error["message"] == "raw_margin is not available for this sklearn model"
    error = _error(client_for("sk-ridge"), rows_body(ROWS, predict_proba=True))
    assert error["message"] == "predict_proba is not available for this sklearn model"
    error = _error(client_for("sk-pipeline"), rows_body(ROWS, predict_proba=True, raw_margin=True))
    assert "raw_margin is not available" in error["message"]


def test_empty_and_malformed_shapes(client_for: Callable[..., FlaskClient]) -> None:
    client = client_for("xgb-reg-ubj")
    error = _error(client, {"request_id": "r", "shape": [0, 6], "data": []})
    assert "at least one row and one column" in error["message"]
    error = _error(client, {"request_id": "r", "shape": [12], "data": [0.0] * 12})
    assert error["message"].startswith("shape:")


def test_other_routes_answer_501(client_for: Callable[..., FlaskClient]) -> None:
    client = client_for("xgb-reg-ubj")
    response = client.post("/encode", json={"request_id": "r", "inputs": ["x"]})
    assert response.status_code == 501
    response = client.post("/generate", json={"request_id": "r", "prompt": "x"})
    assert response.status_code == 501
    info = client.get("/info").get_json()
    assert info["task"] == "tabular" and info["tabular"]["n_features"] == 6
