"""The tabular engine: checks a request's rows against the model's schema,
then predicts through the micro-batcher. Every problem with the rows is a
400 that says what was expected; the model only sees rows that passed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from typing import Any

import numpy as np

from infergate_common.engine import Engine
from infergate_common.errors import InfergateError, InvalidRequest, ServiceUnavailable
from infergate_common.worker_api import (
    TabularPredictRequest,
    TabularPredictResponse,
    TabularSchema,
    Task,
    WorkerInfo,
)

from .batching import RowBatcher
from .frameworks import ModelFile, TabularModel, datatype_of, load_model
from .settings import TabularWorkerSettings

log = logging.getLogger(__name__)


class TabularEngine(Engine):
    def __init__(self, settings: TabularWorkerSettings, model_file: ModelFile) -> None:
        self.settings = settings
        self.model_file = model_file
        self.model: TabularModel | None = None
        self.batcher: RowBatcher | None = None
        self._ready = threading.Event()
        self._failure = ""

    # ------------------------------------------------------------ lifecycle

    def info(self) -> WorkerInfo:
        schema = self.model.schema() if self.model is not None else None
        extra: dict[str, Any] = {
            "model_file": self.model_file.name,
            "nthread": self.settings.nthread,
            "max_batch_size": self.settings.max_batch_size,
            "max_batch_rows": self.settings.max_batch_rows,
            "max_batch_wait_ms": self.settings.max_batch_wait_ms,
        }
        if self.batcher is not None:
            extra["batching"] = self.batcher.stats.snapshot()
        return WorkerInfo(
            name=self.settings.model_name,
            model_id=self.settings.model_path(),
            task=Task.TABULAR,
            backend=self.model_file.framework,
            backend_reason=f"model file {self.model_file.name}",
            architecture=schema.objective if schema else None,
            dtype=np.dtype(self.model.input_dtype).name if self.model else "float32",
            device="cpu",
            extra=extra,
            tabular=schema,
        )

    def load(self) -> None:
        try:
            model = load_model(self.model_file, self.settings.nthread, self.settings.predict_proba)
        except InfergateError as exc:
            self._failure = exc.message
            raise
        self.model = model
        self.batcher = RowBatcher(
            self._predict_batch,
            max_requests=self.settings.max_batch_size,
            max_rows=self.settings.max_batch_rows,
            max_wait_s=self.settings.max_batch_wait_ms / 1000.0,
        )
        self.batcher.start()
        self._ready.set()

    def ready(self) -> tuple[bool, str]:
        if self._failure:
            return False, self._failure
        if not self._ready.is_set():
            return False, "loading"
        if self.batcher is None or not self.batcher.alive():
            return False, "the batcher is not running"
        return True, ""

    def shutdown(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()

    # -------------------------------------------------------------- predict

    def _predict_batch(self, rows: np.ndarray, key: Hashable) -> np.ndarray:
        assert self.model is not None
        proba, margin = bool(key[0]), bool(key[1])  # type: ignore[index]
        return self.model.predict(rows, proba=proba, margin=margin)

    def _options(self, request: TabularPredictRequest, schema: TabularSchema) -> tuple[bool, bool]:
        assert self.model is not None
        framework = self.model.framework.value
        if request.predict_proba and not schema.predict_proba:
            hint = (
                " (its output already is what the objective gives: probabilities for a classifier)"
                if schema.raw_margin
                else ""
            )
            raise InvalidRequest(
                f"predict_proba is not available for this {framework} model{hint}", param="predict_proba"
            )
        if request.raw_margin and not schema.raw_margin:
            raise InvalidRequest(
                f"raw_margin is not available for this {framework} model", param="raw_margin"
            )
        proba = bool(schema.predict_proba and self.settings.predict_proba)
        if request.predict_proba is not None:
            proba = request.predict_proba and schema.predict_proba
        if request.raw_margin and proba:
            raise InvalidRequest("predict_proba and raw_margin are mutually exclusive")
        return proba, bool(request.raw_margin)

    def rows(self, request: TabularPredictRequest) -> np.ndarray:
        """The request's rows as the array the model takes, or a 400."""
        assert self.model is not None
        schema = self.model.schema()
        count, columns = request.shape
        if columns != schema.n_features:
            names = f" ({', '.join(schema.feature_names)})" if schema.feature_names else ""
            names = names if len(names) <= 400 else ""
            raise InvalidRequest(
                f"expected {schema.n_features} features per row{names}, got {columns}", param="shape"
            )
        rows = np.array(request.data, dtype=np.float64).reshape(count, columns)
        missing = np.isnan(rows)
        if not schema.allow_missing and missing.any():
            row, column = (int(i) for i in np.argwhere(missing)[0])
            raise InvalidRequest(
                f"row {row}, feature {column}: a missing value (null or NaN), but this model "
                f"({schema.objective}) needs a number in every feature",
                param="data",
            )
        return rows.astype(self.model.input_dtype, copy=False)

    def predict(self, request: TabularPredictRequest) -> TabularPredictResponse:
        if self.model is None or self.batcher is None:
            raise ServiceUnavailable("model not loaded")
        schema = self.model.schema()
        options = self._options(request, schema)
        rows = self.rows(request)
        try:
            out = self.batcher.submit(rows, options)
        except self.model.input_errors as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidRequest(f"the model refused the rows: {first}") from exc
        except InfergateError:
            raise
        except Exception as exc:
            raise InfergateError(f"prediction failed: {type(exc).__name__}: {exc}") from exc
        return TabularPredictResponse(
            request_id=request.request_id,
            predictions=out.tolist(),
            datatype=datatype_of(out),
            shape=list(out.shape),
        )
