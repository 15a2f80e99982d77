"""Fixtures of worker-tabular's tests: small models trained once per session
(see :mod:`tabular_models`), engines loaded from their folders, and the
worker HTTP app over an engine (Flask's test client: the real routes,
parsing and error rendering, no socket).

* ``built``: name -> :class:`tabular_models.BuiltModel`.
* ``engine_for(name, **settings)``: a loaded :class:`TabularEngine`.
* ``client_for(name, **settings)``: a test client of the worker app.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from tabular_models import BuiltModel, build_all

from infergate_common.worker_app import create_worker_app
from infergate_worker_tabular.engine import TabularEngine
from infergate_worker_tabular.frameworks import find_model_file
from infergate_worker_tabular.settings import TabularWorkerSettings

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltModel]:
    return build_all(tmp_path_factory.mktemp("tabular-models"))


@pytest.fixture
def engine_for(built: dict[str, BuiltModel]) -> Iterator[Callable[..., TabularEngine]]:
    engines: list[TabularEngine] = []

    def make(name: str, **settings: Any) -> TabularEngine:
        folder = str(built[name].folder)
        engine = TabularEngine(
            TabularWorkerSettings(model_name=name, model_id=folder, **settings), find_model_file(folder)
        )
        engine.load()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


@pytest.fixture
def client_for(engine_for: Callable[..., TabularEngine]) -> Callable[..., FlaskClient]:
    def make(name: str, **settings: Any) -> FlaskClient:
        return create_worker_app(engine_for(name, **settings), lambda rid: f"test:{rid}").test_client()

    return make


def rows_body(rows: Any, **extra: Any) -> dict[str, Any]:
    """A /predict body for a 2-D array (NaN sent as null)."""
    import numpy as np

    array = np.asarray(rows, dtype=np.float64)
    data = [None if np.isnan(v) else float(v) for v in array.ravel()]
    return {"request_id": "r1", "shape": list(array.shape), "data": data, **extra}


def model_path(built: dict[str, BuiltModel], name: str) -> Path:
    return built[name].folder
