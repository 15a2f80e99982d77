"""`make run MODEL_ID=<folder holding model.ubj>`: ci/stack.sh recognises the
XGBoost model from the folder's files, serves it with worker-tabular, and its
banner's v1 and v2 curl commands answer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from test_local_stack import LocalStack, _banner_commands

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services" / "worker-tabular" / "tests"))

from tabular_models import BuiltModel, xgboost_models  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, BuiltModel]]:
    model = xgboost_models(tmp_path_factory.mktemp("models"))["xgb-binary-ubj"]
    stack = LocalStack(tmp_path_factory.mktemp("tabular-stack"), MODEL_ID=str(model.folder))
    try:
        stack.wait_for_banner(timeout_s=180)
        yield stack, model
    finally:
        stack.kill()


def test_folder_with_model_ubj_is_served_by_worker_tabular(served: tuple[LocalStack, BuiltModel]) -> None:
    stack, model = served
    assert "holds model.ubj: serving it with worker-tabular" in stack.text()
    cards = requests.get(f"{stack.url}/openai/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["task"], m["backend"]) for m in cards] == [("xgb-binary-ubj", "tabular", "xgboost")]
    rows = np.nan_to_num(model.rows)
    v1 = requests.post(
        f"{stack.url}/v1/models/xgb-binary-ubj:predict", json={"instances": rows.tolist()}, timeout=30
    )
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], model.expected(rows), rtol=1e-6)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_banner_curls_predict(served: tuple[LocalStack, BuiltModel]) -> None:
    stack, _ = served
    commands = _banner_commands(stack.text())
    predicts = [c for c in commands if ":predict" in c or "/infer" in c]
    assert len(predicts) == 2, stack.text()[-3000:]
    for command in predicts:
        done = subprocess.run(
            ["bash", "-c", command + " --fail --silent --show-error --max-time 30"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}\n{done.stdout}"
        assert "predictions" in done.stdout or '"outputs"' in done.stdout
