"""Loading each framework's model files, the schema they report, and the
library's own predictions coming back from the engine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import rows_body
from tabular_models import BuiltModel

from infergate_common.errors import StartupError
from infergate_common.worker_api import Backend, TabularPredictRequest, Task
from infergate_worker_tabular.engine import TabularEngine
from infergate_worker_tabular.frameworks import find_model_file, load_model

ALL = [
    *(f"xgb-{kind}-{fmt}" for kind in ("binary", "multi", "reg") for fmt in ("json", "ubj", "bst")),
    "lgb-multi",
    "sk-pipeline",
    "sk-ridge",
]


def test_folder_without_a_model_file_names_what_it_expects(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(StartupError) as info:
        find_model_file(str(tmp_path))
    assert "no model file" in info.value.message
    assert "model.ubj" in info.value.message and "model.joblib" in info.value.message
    assert "found config.json" in info.value.message


def test_two_model_files_are_refused(tmp_path: Path, built: dict[str, BuiltModel]) -> None:
    for name in ("model.json", "model.ubj"):
        (tmp_path / name).write_bytes((built[f"xgb-binary-{name[6:]}"].folder / name).read_bytes())
    with pytest.raises(StartupError) as info:
        find_model_file(str(tmp_path))
    assert "more than one model file" in info.value.message
    assert "model.json, model.ubj" in info.value.message


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="does not exist"):
        find_model_file(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", ["model.ubj", "model.txt", "model.joblib"])
def test_corrupt_model_file_is_a_startup_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"not a model at all")
    with pytest.raises(StartupError) as info:
        load_model(find_model_file(str(tmp_path)), None, False)
    assert str(tmp_path / name) in info.value.message


def test_command_line_start_up_error(tmp_path: Path) -> None:
    """``python -m infergate_worker_tabular`` on an empty folder exits 2 with the reason."""
    done = subprocess.run(
        [sys.executable, "-m", "infergate_worker_tabular", "--model_dir", str(tmp_path), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "worker-tabular: error: no model file in" in done.stderr


@pytest.mark.parametrize(
    ("name", "framework", "objective", "outputs", "datatype"),
    [
        ("xgb-binary-ubj", Backend.XGBOOST, "binary:logistic", 1, "FP32"),
        ("xgb-multi-json", Backend.XGBOOST, "multi:softprob", 3, "FP32"),
        ("xgb-reg-bst", Backend.XGBOOST, "reg:squarederror", 1, "FP32"),
        ("lgb-multi", Backend.LIGHTGBM, "multiclass", 3, "FP64"),
        ("sk-pipeline", Backend.SKLEARN, "Pipeline(StandardScaler, LogisticRegression)", 1, "BYTES"),
        ("sk-ridge", Backend.SKLEARN, "Pipeline(SimpleImputer, Ridge)", 1, "FP64"),
    ],
)
def test_info_describes_the_model(
    engine_for: Callable[..., TabularEngine],
    name: str,
    framework: Backend,
    objective: str,
    outputs: int,
    datatype: str,
) -> None:
    info = engine_for(name, nthread=1).info()
    assert info.task == Task.TABULAR and info.backend == framework
    assert info.tabular is not None
    assert info.tabular.n_features == 6
    assert info.tabular.objective == objective
    assert info.tabular.outputs == outputs
    assert info.tabular.output_datatype == datatype
    assert info.extra["nthread"] == 1


def test_missing_values_follow_the_model(engine_for: Callable[..., TabularEngine]) -> None:
    schemas = {name: engine_for(name).info().tabular for name in ("xgb-reg-json", "sk-pipeline", "sk-ridge")}
    assert {name: s.allow_missing for name, s in schemas.items() if s} == {
        "xgb-reg-json": True,
        "sk-pipeline": False,  # a scaler passes NaN on to the logistic regression
        "sk-ridge": True,  # the imputer fills it in
    }
    assert schemas["sk-pipeline"] is not None
    assert schemas["sk-pipeline"].classes == ["high", "low", "mid"]


@pytest.mark.parametrize("name", ALL)
def test_predictions_equal_the_library(
    engine_for: Callable[..., TabularEngine], built: dict[str, BuiltModel], name: str
) -> None:
    model = built[name]
    response = engine_for(name).predict(TabularPredictRequest(**rows_body(model.rows)))
    expected = model.expected(model.rows)
    assert response.shape == list(expected.shape)
    if expected.dtype.kind in "OU":
        assert response.predictions == expected.tolist()
    else:
        np.testing.assert_allclose(np.asarray(response.predictions), expected, rtol=1e-6)


def test_raw_margin_and_predict_proba(
    engine_for: Callable[..., TabularEngine], built: dict[str, BuiltModel]
) -> None:
    xgb = built["xgb-multi-ubj"]
    engine = engine_for("xgb-multi-ubj")
    margin = engine.predict(TabularPredictRequest(**rows_body(xgb.rows, raw_margin=True)))
    np.testing.assert_allclose(np.asarray(margin.predictions), xgb.expected(xgb.rows, margin=True), rtol=1e-6)

    sk = built["sk-pipeline"]
    labels_by_default = engine_for("sk-pipeline")
    proba = labels_by_default.predict(TabularPredictRequest(**rows_body(sk.rows, predict_proba=True)))
    np.testing.assert_allclose(np.asarray(proba.predictions), sk.expected(sk.rows, proba=True), rtol=1e-9)
    assert proba.shape == [9, 3] and proba.datatype == "FP64"

    # --predict_proba makes probabilities the default; a request may still ask for labels.
    proba_by_default = engine_for("sk-pipeline", predict_proba=True)
    assert proba_by_default.info().tabular.outputs == 3  # type: ignore[union-attr]
    default = proba_by_default.predict(TabularPredictRequest(**rows_body(sk.rows)))
    assert default.predictions == proba.predictions
    labels = proba_by_default.predict(TabularPredictRequest(**rows_body(sk.rows, predict_proba=False)))
    assert labels.predictions == sk.expected(sk.rows).tolist()
