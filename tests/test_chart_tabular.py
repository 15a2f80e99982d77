"""The chart's tabular runtime: what it renders for the XGBoost example, what
it refuses, the image it names agreeing with worker-tabular's Dockerfile,
and the rendered worker command run as a real process behind the test
stack's router, answering v1 and v2 with the model's own predictions."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from chart_fixtures import (
    CHART_DIR,
    ROOT,
    Chart,
    Manifest,
    RenderFailed,
    container,
    example,
    flag_value,
    helm_binary,
)
from harness.processes import stop_all
from harness.stack import Stack, Worker
from test_chart_images import dependencies, instructions, pinned_requirements

sys.path.insert(0, str(ROOT / "services" / "worker-tabular" / "tests"))

from tabular_models import BuiltModel, xgboost_models

APP_VERSION = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]


@pytest.fixture(scope="module")
def chart() -> Chart:
    return Chart(helm_binary())


@pytest.fixture(scope="module")
def example_worker(chart: Chart) -> Manifest:
    return chart.render(files=(example("xgboost-ubj"),)).one("Deployment", chart.name("worker-fraud"))


def test_example_serves_model_ubj_from_the_claim(example_worker: Manifest, chart: Chart) -> None:
    spec = container(example_worker)
    assert spec["command"] == ["python", "-m", "infergate_worker_tabular"]
    assert spec["image"] == f"ghcr.io/infergate/worker-tabular:{APP_VERSION}"
    args = spec["args"]
    assert "--backend" not in args
    assert flag_value(args, "--model_name") == "fraud"
    assert flag_value(args, "--model_id") == "/mnt/models"
    assert flag_value(args, "--nthread") == "2"
    assert flag_value(args, "--max_batch_size") == "64"
    pod = example_worker["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": "fraud-model", "readOnly": True}
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": "/mnt/models", "readOnly": True}
    assert spec["resources"]["requests"] == {"cpu": "2", "memory": "1Gi"}
    assert example_worker["spec"]["replicas"] == 2
    # The language model beside it keeps its own runtime.
    minilm = chart.render(files=(example("xgboost-ubj"),)).one("Deployment", chart.name("worker-minilm"))
    assert container(minilm)["command"] == ["python", "-m", "infergate_worker_hf"]


def test_runtime_defaults_apply(chart: Chart) -> None:
    values = {"models": {"t": {"runtime": "tabular", "storage": {"hostPath": "/srv/models/t"}}}}
    worker = chart.render(values).one("Deployment", chart.name("worker-t"))
    spec = container(worker)
    assert spec["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    assert spec["startupProbe"]["periodSeconds"] * spec["startupProbe"]["failureThreshold"] == 300
    assert "tolerations" not in worker["spec"]["template"]["spec"]
    runtime_args = {"models": values["models"], "runtimes": {"tabular": {"args": ["--nthread=4"]}}}
    spec = container(chart.render(runtime_args).one("Deployment", chart.name("worker-t")))
    assert flag_value(spec["args"], "--nthread") == "4"


def test_a_hub_id_is_refused_for_the_tabular_runtime(chart: Chart) -> None:
    with pytest.raises(
        RenderFailed, match=r"models\.t: the tabular runtime loads a model folder from a volume"
    ):
        chart.render({"models": {"t": {"runtime": "tabular", "modelId": "org/xgb"}}})
    # A path inside the pod is fine.
    worker = chart.render({"models": {"t": {"runtime": "tabular", "modelId": "/models/t"}}})
    args = container(worker.one("Deployment", chart.name("worker-t")))["args"]
    assert flag_value(args, "--model_id") == "/models/t"


def test_schema_knows_the_runtime(chart: Chart) -> None:
    result = chart.run("template", {"models": {"t": {"runtime": "xgboost", "storage": {"pvc": "c"}}}})
    assert result.returncode != 0
    assert "tabular" in result.stderr  # the allowed values are listed
    result = chart.run("template", {"runtimes": {"tabular": {"image": {"repository": "x"}, "gpus": 1}}})
    assert result.returncode != 0


def test_image_runs_what_the_chart_runs(example_worker: Manifest) -> None:
    steps = instructions(ROOT / "services" / "worker-tabular" / "Dockerfile")
    keyed = dict(steps)
    spec = container(example_worker)
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert json.loads(keyed["ENTRYPOINT"]) == spec["command"]
    assert keyed["USER"] == str(example_worker["spec"]["template"]["spec"]["securityContext"]["runAsUser"])
    assert int(keyed["EXPOSE"]) == spec["ports"][0]["containerPort"]
    for keyword, args in steps:
        if keyword == "COPY":
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source} does not exist"
    pins = pinned_requirements()
    wanted = set(dependencies("common")) | set(dependencies("worker-tabular"))
    assert sorted(n for n in wanted if not n.startswith("infergate-") and n not in pins) == []


# Flags the local stand-in sets itself (the addresses of this machine's stack).
_LOCAL_FLAGS = ("--port", "--registry_url", "--redis_url", "--advertise_url")


def _local_args(args: list[str], model_folder: Path) -> list[str]:
    """The rendered args with the addresses dropped and /mnt/models (the
    claim's mount) replaced by the folder holding the model."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in _LOCAL_FLAGS:
            skip = True
            continue
        out.append(str(model_folder) if arg == "/mnt/models" else arg)
    return out


@pytest.fixture(scope="module")
def chart_worker(
    stack: Stack, example_worker: Manifest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Worker, BuiltModel]]:
    model = xgboost_models(tmp_path_factory.mktemp("chart-tabular"))["xgb-binary-ubj"]
    spec = container(example_worker)
    assert spec["command"][0] == "python"
    cmd = [sys.executable, *spec["command"][1:], *_local_args(spec["args"], model.folder)]
    worker = stack.launch_worker("fraud", cmd)
    try:
        stack.wait_worker(worker, timeout_s=120)
        yield worker, model
    finally:
        stop_all([worker.process])
        stack.stop_worker(worker)
        stack.forget_model("fraud")


def test_rendered_worker_answers_v1_and_v2(stack: Stack, chart_worker: tuple[Worker, BuiltModel]) -> None:
    worker, model = chart_worker
    info = requests.get(f"{worker.url}/info", timeout=10).json()
    assert info["extra"]["nthread"] == 2 and info["extra"]["max_batch_size"] == 64
    rows = np.nan_to_num(model.rows)
    expected = model.expected(rows)
    v1 = requests.post(
        f"{stack.router_url}/v1/models/fraud:predict", json={"instances": rows.tolist()}, timeout=30
    )
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=1e-6)
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    v2 = requests.post(f"{stack.router_url}/v2/models/fraud/infer", json={"inputs": [tensor]}, timeout=30)
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(v2.json()["outputs"][0]["data"], expected, rtol=1e-6)
