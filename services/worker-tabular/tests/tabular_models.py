"""Small tabular models trained in the tests themselves (a second or two
for all of them), saved the way each library saves them, with the rows to
check them on and the library's own predictions on those rows."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import xgboost as xgb
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

N_FEATURES = 6


@dataclass
class BuiltModel:
    folder: Path
    # The library's own answer for ``rows`` (``predict``; ``proba`` where the model has it).
    expected: Callable[..., np.ndarray]
    rows: np.ndarray


def dataset(rows: int = 240, features: int = N_FEATURES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    score = x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + rng.normal(scale=0.3, size=rows)
    return x, score


def _check_rows(features: int = N_FEATURES) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.normal(size=(9, features))


def xgboost_models(root: Path) -> dict[str, BuiltModel]:
    """``xgb-<kind>-<format>``: a binary classifier, a 3-class classifier and
    a regressor, each saved as model.json, model.ubj and model.bst."""
    x, score = dataset()
    labels = {
        "binary": (score > 0).astype(int),
        "multi": np.digitize(score, [-0.7, 0.7]),
    }
    estimators: dict[str, Any] = {
        "binary": xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(x, labels["binary"]),
        "multi": xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(x, labels["multi"]),
        "reg": xgb.XGBRegressor(n_estimators=8, max_depth=3, n_jobs=1).fit(x, score),
    }
    rows = _check_rows()
    rows[1, 2] = np.nan  # XGBoost takes missing values
    built = {}
    for kind, estimator in estimators.items():
        booster = estimator.get_booster()
        for fmt in ("json", "ubj", "bst"):
            folder = root / f"xgb-{kind}-{fmt}"
            folder.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                # XGBoost writes model.bst as UBJSON and says so.
                warnings.simplefilter("ignore", UserWarning)
                booster.save_model(str(folder / f"model.{fmt}"))

            def expected(rows: np.ndarray, margin: bool = False, booster: Any = booster) -> np.ndarray:
                return np.asarray(booster.predict(xgb.DMatrix(rows), output_margin=margin))

            built[f"xgb-{kind}-{fmt}"] = BuiltModel(folder, expected, rows)
    return built


def lightgbm_model(root: Path) -> BuiltModel:
    x, score = dataset()
    model = lgb.LGBMClassifier(n_estimators=8, num_leaves=7, min_child_samples=5, verbose=-1, n_jobs=1)
    model.fit(x, np.digitize(score, [-0.7, 0.7]))
    folder = root / "lgb-multi"
    folder.mkdir(parents=True, exist_ok=True)
    model.booster_.save_model(str(folder / "model.txt"))
    booster = lgb.Booster(model_file=str(folder / "model.txt"))

    def expected(rows: np.ndarray, margin: bool = False) -> np.ndarray:
        return np.asarray(booster.predict(rows, raw_score=margin))

    rows = _check_rows()
    rows[3, 0] = np.nan
    return BuiltModel(folder, expected, rows)


def sklearn_pipeline(root: Path, file_name: str = "model.joblib") -> BuiltModel:
    """Scaler and logistic regression with string class labels; no imputer,
    so it cannot take missing values."""
    x, score = dataset()
    names = np.array(["low", "mid", "high"])
    pipeline = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=200))])
    pipeline.fit(x, names[np.digitize(score, [-0.7, 0.7])])
    folder = root / f"sk-pipeline-{file_name.split('.')[-1]}"
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, folder / file_name)

    def expected(rows: np.ndarray, proba: bool = False) -> np.ndarray:
        return np.asarray(pipeline.predict_proba(rows) if proba else pipeline.predict(rows))

    return BuiltModel(folder, expected, _check_rows())


def sklearn_imputing_regressor(root: Path) -> BuiltModel:
    """A pipeline that imputes, so it takes missing values; no predict_proba."""
    from sklearn.linear_model import Ridge

    x, score = dataset()
    pipeline = Pipeline([("impute", SimpleImputer()), ("ridge", Ridge())]).fit(x, score)
    folder = root / "sk-ridge"
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, folder / "model.pkl")
    rows = _check_rows()
    rows[0, 4] = np.nan
    return BuiltModel(folder, lambda rows: np.asarray(pipeline.predict(rows)), rows)


def build_all(root: Path) -> dict[str, BuiltModel]:
    models = xgboost_models(root)
    models["lgb-multi"] = lightgbm_model(root)
    models["sk-pipeline"] = sklearn_pipeline(root)
    models["sk-ridge"] = sklearn_imputing_regressor(root)
    return models
