"""One class per framework behind a small interface: load a model file,
describe it (:class:`TabularSchema`) and predict on a 2-D numpy array.

The model file names are KServe's: XGBoost ``model.json``, ``model.ubj`` or
``model.bst``; LightGBM ``model.txt``; scikit-learn ``model.joblib``,
``model.pkl`` or ``model.pickle``. A folder must hold exactly one of them.
"""

from __future__ import annotations

import json
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from infergate_common.errors import StartupError
from infergate_common.worker_api import Backend, TabularSchema

# File name -> framework, in the order they are listed in errors.
MODEL_FILES: dict[str, Backend] = {
    "model.json": Backend.XGBOOST,
    "model.ubj": Backend.XGBOOST,
    "model.bst": Backend.XGBOOST,
    "model.txt": Backend.LIGHTGBM,
    "model.joblib": Backend.SKLEARN,
    "model.pkl": Backend.SKLEARN,
    "model.pickle": Backend.SKLEARN,
}


@dataclass(frozen=True)
class ModelFile:
    path: str
    framework: Backend

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def find_model_file(folder: str) -> ModelFile:
    """The one model file in ``folder``; a start-up error naming what is
    there otherwise."""
    if not os.path.isdir(folder):
        raise StartupError(f"model folder {folder} does not exist")
    present = sorted(os.listdir(folder))
    found = [name for name in MODEL_FILES if name in present]
    expected = ", ".join(MODEL_FILES)
    if not found:
        listing = ", ".join(present[:20]) or "nothing"
        raise StartupError(f"no model file in {folder}: expected one of {expected}; found {listing}")
    if len(found) > 1:
        raise StartupError(
            f"more than one model file in {folder} ({', '.join(found)}): keep exactly one of {expected}"
        )
    return ModelFile(os.path.join(folder, found[0]), MODEL_FILES[found[0]])


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of a numpy array."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "f":
        return {2: "FP16", 4: "FP32"}.get(size, "FP64")
    if kind in "iu":
        return f"{'INT' if kind == 'i' else 'UINT'}{size * 8}"
    if kind == "b":
        return "BOOL"
    return "BYTES"


class TabularModel(ABC):
    """A loaded model. ``predict`` is called from one thread at a time."""

    framework: Backend
    # The dtype rows are converted to before ``predict``.
    input_dtype: type[np.floating[Any]] = np.float64
    # What the library raises for rows it cannot take: a 400, not a 500.
    input_errors: tuple[type[BaseException], ...] = (ValueError, TypeError)

    def __init__(self, model_file: ModelFile, nthread: int | None, predict_proba: bool) -> None:
        """``nthread``: threads per prediction (XGBoost, LightGBM);
        ``predict_proba``: answer probabilities by default where the model
        has them (scikit-learn)."""
        self.model_file = model_file
        self.nthread = nthread

    @abstractmethod
    def schema(self) -> TabularSchema:
        """Inputs and outputs of the model."""

    @abstractmethod
    def predict(self, rows: np.ndarray, proba: bool, margin: bool) -> np.ndarray:
        """One prediction per row (a 1-D array, or 2-D with one column per output)."""

    def architecture(self) -> str:
        return self.schema().objective


class XGBoostModel(TabularModel):
    framework = Backend.XGBOOST
    input_dtype = np.float32

    def __init__(self, model_file: ModelFile, nthread: int | None, predict_proba: bool) -> None:
        super().__init__(model_file, nthread, predict_proba)
        import xgboost as xgb

        self.input_errors = (ValueError, TypeError, xgb.core.XGBoostError)
        self.booster = xgb.Booster()
        try:
            with warnings.catch_warnings():
                # model.bst written by XGBoost 2 or newer is UBJSON; XGBoost says so in a warning.
                warnings.filterwarnings("ignore", message=".*Unknown file format")
                self.booster.load_model(model_file.path)
        except xgb.core.XGBoostError as exc:
            first = str(exc).strip().splitlines()[0]
            raise StartupError(f"XGBoost could not load {model_file.path}: {first}") from exc
        if nthread:
            self.booster.set_param({"nthread": nthread})
        learner = json.loads(self.booster.save_config())["learner"]
        self.objective = str(learner["objective"]["name"])
        params = learner["learner_model_param"]
        num_class = int(params.get("num_class", "0"))
        num_target = int(params.get("num_target", "1"))
        if self.objective == "multi:softprob" or (num_class > 1 and self.objective != "multi:softmax"):
            self.outputs = num_class
        else:
            self.outputs = max(1, num_target)
        # Margins of a multi-class model have one column per class, whatever the objective.
        self.margin_outputs = num_class if num_class > 1 else max(1, num_target)
        self._schema = TabularSchema(
            n_features=self.booster.num_features(),
            feature_names=self.booster.feature_names,
            objective=self.objective,
            outputs=self.outputs,
            output_datatype="FP32",
            classes=list(range(num_class)) if num_class > 1 else None,
            allow_missing=True,
            predict_proba=False,
            raw_margin=True,
        )

    def schema(self) -> TabularSchema:
        return self._schema

    def predict(self, rows: np.ndarray, proba: bool, margin: bool) -> np.ndarray:
        # No DMatrix per call: inplace_predict reads the numpy buffer directly.
        return np.asarray(
            self.booster.inplace_predict(
                rows, predict_type="margin" if margin else "value", validate_features=False
            )
        )


class LightGBMModel(TabularModel):
    framework = Backend.LIGHTGBM

    def __init__(self, model_file: ModelFile, nthread: int | None, predict_proba: bool) -> None:
        super().__init__(model_file, nthread, predict_proba)
        import lightgbm as lgb

        self.input_errors = (ValueError, TypeError, lgb.basic.LightGBMError)
        try:
            self.booster = lgb.Booster(model_file=model_file.path)
        except lgb.basic.LightGBMError as exc:
            first = str(exc).strip().splitlines()[0]
            raise StartupError(f"LightGBM could not load {model_file.path}: {first}") from exc
        self.objective = str(self.booster.params.get("objective") or "unknown")
        per_iteration = self.booster.num_model_per_iteration()
        self._schema = TabularSchema(
            n_features=self.booster.num_feature(),
            feature_names=self.booster.feature_name(),
            objective=self.objective,
            outputs=per_iteration,
            output_datatype="FP64",
            classes=list(range(per_iteration)) if self.objective.startswith("multiclass") else None,
            allow_missing=True,
            predict_proba=False,
            raw_margin=True,
        )

    def schema(self) -> TabularSchema:
        return self._schema

    def predict(self, rows: np.ndarray, proba: bool, margin: bool) -> np.ndarray:
        kwargs: dict[str, Any] = {"raw_score": margin}
        if self.nthread:
            kwargs["num_threads"] = self.nthread
        return np.asarray(self.booster.predict(rows, **kwargs))


def _takes_missing(estimator: Any, n_features: int) -> bool:
    """Whether the estimator predicts on a row of missing values: the tags
    cannot tell for a pipeline (a scaler passes NaN on, an imputer removes it)."""
    probe = np.full((1, n_features), np.nan)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator.predict(probe)
    except Exception:
        return False
    return True


class SklearnModel(TabularModel):
    framework = Backend.SKLEARN

    def __init__(self, model_file: ModelFile, nthread: int | None, predict_proba: bool) -> None:
        super().__init__(model_file, nthread, predict_proba)
        import joblib

        try:
            # joblib reads plain pickles too. Unpickling runs code from the
            # file: serve only files from a volume the operator controls.
            self.estimator = joblib.load(model_file.path)
        except Exception as exc:
            raise StartupError(
                f"scikit-learn model {model_file.path} could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        if not hasattr(self.estimator, "predict"):
            raise StartupError(f"{model_file.path} holds a {type(self.estimator).__name__}, not an estimator")
        n_features = getattr(self.estimator, "n_features_in_", None)
        if not isinstance(n_features, int | np.integer):
            raise StartupError(
                f"{type(self.estimator).__name__} in {model_file.path} does not record how many features "
                "it was fitted on (n_features_in_): refit it with scikit-learn 1.0 or newer"
            )
        names = getattr(self.estimator, "feature_names_in_", None)
        classes = getattr(self.estimator, "classes_", None)
        self.has_proba = hasattr(self.estimator, "predict_proba")
        self.default_proba = predict_proba and self.has_proba
        label_type = datatype_of(np.asarray(classes)) if classes is not None else "FP64"
        name = type(self.estimator).__name__
        if getattr(self.estimator, "steps", None):
            name = f"Pipeline({', '.join(type(step).__name__ for _, step in self.estimator.steps)})"
        self._schema = TabularSchema(
            n_features=int(n_features),
            feature_names=[str(n) for n in names] if names is not None else None,
            objective=name,
            outputs=len(classes) if self.default_proba and classes is not None else 1,
            output_datatype="FP64" if self.default_proba else label_type,
            classes=[c.item() if isinstance(c, np.generic) else c for c in classes]
            if classes is not None
            else None,
            allow_missing=_takes_missing(self.estimator, int(n_features)),
            predict_proba=self.has_proba,
            raw_margin=False,
        )

    def schema(self) -> TabularSchema:
        return self._schema

    def predict(self, rows: np.ndarray, proba: bool, margin: bool) -> np.ndarray:
        with warnings.catch_warnings():
            # Fitted on a DataFrame, predicting on an array: the columns are taken in order.
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            if proba:
                return np.asarray(self.estimator.predict_proba(rows))
            return np.asarray(self.estimator.predict(rows))


FRAMEWORKS: dict[Backend, type[TabularModel]] = {
    Backend.XGBOOST: XGBoostModel,
    Backend.LIGHTGBM: LightGBMModel,
    Backend.SKLEARN: SklearnModel,
}


def load_model(model_file: ModelFile, nthread: int | None, predict_proba: bool) -> TabularModel:
    return FRAMEWORKS[model_file.framework](model_file, nthread, predict_proba)
