"""The chart's Batch API: the batch worker Deployment, the file storage (a
PVC shared with the router, or object storage with credentials from a
Secret), the image, and the rendered command run as a real local process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from chart_fixtures import ROOT, Chart, Manifests, container, env_of, helm_binary
from harness.processes import Process, stop_all
from harness.redis_server import RedisServer
from test_chart_images import dependencies, instructions, pinned_requirements

from infergate_batch.settings import BatchSettings


@pytest.fixture(scope="module")
def chart() -> Chart:
    return Chart(helm_binary())


@pytest.fixture(scope="module")
def defaults(chart: Chart) -> Manifests:
    return chart.render()


def batch_env(manifests: Manifests, chart: Chart, component: str) -> dict[str, Any]:
    return env_of(container(manifests.one("Deployment", chart.name(component))))


def test_the_batch_worker_and_its_volume_by_default(defaults: Manifests, chart: Chart) -> None:
    deployment = defaults.one("Deployment", chart.name("batch"))
    spec = container(deployment)
    assert spec["command"] == ["python", "-m", "infergate_batch", "--concurrency", "2"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "batch"
    env = env_of(spec)
    # The password comes from the internal Secret, as for every service.
    assert env["INFERGATE_REDIS_URL"]["value"] == (
        f"redis://:$(INFERGATE_REDIS_PASSWORD)@{chart.name('redis')}:6379/0"
    )
    assert env["INFERGATE_REGISTRY_URL"]["value"] == f"http://{chart.name('registry')}:8090"
    assert env["INFERGATE_BATCH_STORAGE_URL"]["value"] == "/var/lib/infergate/batch"
    assert env["INFERGATE_BATCH_VISIBILITY_TIMEOUT_S"]["value"] == "7200"
    claim = defaults.one("PersistentVolumeClaim", chart.name("batch"))
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    # The router sees the same files at the same place.
    router = defaults.one("Deployment", chart.name("router"))
    router_env = env_of(container(router))
    for name, entry in env.items():
        if name.startswith("INFERGATE_BATCH_"):
            assert router_env[name] == entry, name
    for workload in (deployment, router):
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["batch-files"]["persistentVolumeClaim"]["claimName"] == chart.name("batch")
        mounts = {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}
        assert mounts["batch-files"] == "/var/lib/infergate/batch"
    assert router_env["TMPDIR"]["value"] == "/var/tmp/uploads"
    assert not defaults.of_kind("Secret") or chart.name("batch") not in defaults.names("Secret")


def test_every_batch_setting_is_one_the_service_reads(defaults: Manifests, chart: Chart) -> None:
    """A renamed setting fails here rather than being silently ignored."""
    fields = {f"INFERGATE_{name.upper()}" for name in BatchSettings.model_fields}
    rendered = [name for name in batch_env(defaults, chart, "batch") if name.startswith("INFERGATE_BATCH_")]
    assert len(rendered) >= 8
    assert set(rendered) <= fields, set(rendered) - fields


def test_object_storage_with_credentials_from_a_secret(chart: Chart) -> None:
    store = {
        "url": "s3://infergate-batch/files",
        "endpointUrl": "http://minio.storage:9000",
        "region": "eu-west-1",
        "accessKeyId": "AKIA-TEST",
        "secretAccessKey": "s3cr3t",
    }
    manifests = chart.render({"batch": {"storage": {"type": "objectStore", "objectStore": store}}})
    assert "PersistentVolumeClaim" not in manifests.kinds()
    secret = manifests.one("Secret", chart.name("batch"))
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "AKIA-TEST", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    for component in ("batch", "router"):
        env = batch_env(manifests, chart, component)
        assert env["INFERGATE_BATCH_STORAGE_URL"]["value"] == "s3://infergate-batch/files"
        options = json.loads(env["INFERGATE_BATCH_STORAGE_OPTIONS"]["value"])
        assert options == {
            "client_kwargs": {"endpoint_url": "http://minio.storage:9000", "region_name": "eu-west-1"}
        }
        key = env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
        assert key == {"name": chart.name("batch"), "key": "AWS_SECRET_ACCESS_KEY"}
        workload = manifests.one("Deployment", chart.name(component))
        assert "batch-files" not in {v["name"] for v in workload["spec"]["template"]["spec"]["volumes"]}

    existing = {"url": "s3://b/p", "credentialsSecret": {"name": "my-s3", "accessKeyIdKey": "id"}}
    manifests = chart.render({"batch": {"storage": {"type": "objectStore", "objectStore": existing}}})
    assert chart.name("batch") not in manifests.names("Secret")
    env = batch_env(manifests, chart, "batch")
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "my-s3", "key": "id"}
    assert json.loads(env["INFERGATE_BATCH_STORAGE_OPTIONS"]["value"]) == {}


def test_existing_claim_and_disabled(chart: Chart) -> None:
    manifests = chart.render(
        {"batch": {"storage": {"pvc": {"existingClaim": "shared-files"}}, "replicas": 3}}
    )
    assert "PersistentVolumeClaim" not in manifests.kinds()
    deployment = manifests.one("Deployment", chart.name("batch"))
    assert deployment["spec"]["replicas"] == 3
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["batch-files"]["persistentVolumeClaim"]["claimName"] == "shared-files"

    off = chart.render({"batch": {"enabled": False}})
    assert chart.name("batch") not in off.names("Deployment")
    assert "PersistentVolumeClaim" not in off.kinds()
    router_env = batch_env(off, chart, "router")
    assert router_env["INFERGATE_BATCH_ENABLED"]["value"] == "false"
    assert not any(name.startswith("INFERGATE_BATCH_STORAGE") for name in router_env)


def test_network_policies_let_batch_workers_reach_the_models(chart: Chart) -> None:
    manifests = chart.render(
        {"networkPolicy": {"enabled": True}, "models": {"m": {"modelId": "org/m"}}},
        "--api-versions",
        "networking.k8s.io/v1",
    )
    worker = manifests.one("NetworkPolicy", chart.name("worker"))
    sources = [
        rule["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in worker["spec"]["ingress"][0]["from"]
    ]
    assert sources == ["router", "batch"]
    for name in ("redis", "registry"):
        policy = manifests.one("NetworkPolicy", chart.name(name))
        allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]
        assert "batch" in allowed


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"batch": {"storage": {"type": "nfs"}}}, "unknown storage type"),
        ({"batch": {"concurency": 2}}, "misspelt field"),
        ({"batch": {"config": {"chunkLines": 0}}}, "chunk of no lines"),
        ({"batch": {"config": {"linesPerReplca": 2}}}, "misspelt setting"),
        ({"batch": {"storage": {"type": "objectStore"}}}, "object storage without a URL"),
        (
            {
                "batch": {
                    "storage": {"type": "objectStore", "objectStore": {"url": "s3://b", "accessKeyId": "a"}}
                }
            },
            "key without secret",
        ),
    ],
)
def test_bad_values_are_refused(chart: Chart, values: dict[str, Any], why: str) -> None:
    result = chart.run("template", values)
    assert result.returncode != 0, why


def test_the_image_runs_what_the_chart_runs(defaults: Manifests, chart: Chart) -> None:
    steps = instructions(ROOT / "services" / "batch" / "Dockerfile")
    assert steps[0] == ("FROM", "python:3.11-slim-bookworm")
    for keyword, args in steps:
        if keyword == "COPY":
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
    deployment = defaults.one("Deployment", chart.name("batch"))
    assert dict(steps)["USER"] == str(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"])
    assert json.loads(dict(steps)["CMD"]) == container(deployment)["command"]
    install = [
        args for keyword, args in steps if keyword == "RUN" and "--constraint ci/locks/main.txt" in args
    ]
    assert install and "./services/batch[s3]" in install[-1] and "./services/router" in install[-1]
    pins = pinned_requirements()
    wanted = set(dependencies("batch")) | {"s3fs"}
    assert sorted(name for name in wanted if not name.startswith("infergate-") and name not in pins) == []


def test_the_rendered_command_runs(defaults: Manifests, chart: Chart, tmp_path: Path) -> None:
    """The batch container's command and environment, with the cluster's
    addresses replaced by local ones, start a worker that consumes the queue."""
    server = RedisServer(tmp_path).start()
    spec = container(defaults.one("Deployment", chart.name("batch")))
    local = {
        "INFERGATE_REDIS_URL": server.url,
        "INFERGATE_REGISTRY_URL": "http://127.0.0.1:9",
        "INFERGATE_BATCH_STORAGE_URL": str(tmp_path / "files"),
    }
    env = {name: local.get(name, entry.get("value", "")) for name, entry in env_of(spec).items()}
    command = [sys.executable if spec["command"][0] == "python" else spec["command"][0], *spec["command"][1:]]
    process = Process("chart-batch", command, tmp_path / "batch.log", env=env)
    try:
        process.wait_until(lambda: "batch worker ready" in process.log_tail(100_000), 60, "consuming batches")
        client = redis.Redis.from_url(server.url)
        # The worker consumes the queue named in the chart's stream prefix.
        assert any(key.startswith(b"infergate:celery:") for key in client.keys("*"))
        client.close()
    finally:
        stop_all([process])
        server.stop()
