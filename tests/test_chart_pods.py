"""Render tests of what a GPU cluster needs from the chart: pod settings
merged over the runtime's, the CUDA image for GPU models, the model cache,
storageUri, no-surge rollouts, drain and preStop, metrics ports never
routed, KEDA queries with namespace and release filters, Ingress domain
groups, Redis's memory cap, a private registry, the Grafana dashboard, and
the add-on kinds against their CRDs' schemas."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from chart_fixtures import ROOT, Chart, Manifests, container, env_of, example, flag_value, helm_binary

sys.path.insert(0, str(ROOT / "ci"))
import validate_addons

ADDONS = (
    "--api-versions",
    "monitoring.coreos.com/v1",
    "--api-versions",
    "keda.sh/v1alpha1",
    "--api-versions",
    "gateway.networking.k8s.io/v1",
)


@pytest.fixture(scope="module")
def chart() -> Chart:
    return Chart(helm_binary())


def pod_of(chart: Chart, manifests: Manifests, name: str) -> dict[str, Any]:
    return manifests.one("Deployment", chart.name(name))["spec"]["template"]["spec"]


# ------------------------------------------------------------- the seed's two examples


def test_bert_example_gets_its_gpu_the_cuda_image_and_a_cache(chart: Chart) -> None:
    manifests = chart.render(files=(example("kserve-bert"),))
    pod = pod_of(chart, manifests, "worker-bert")
    spec = container(manifests.one("Deployment", chart.name("worker-bert")))
    assert spec["image"] == "ghcr.io/infergate/worker-hf:0.1.0-cuda"
    assert flag_value(spec["args"], "--device") == "cuda"
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache == {"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}}
    assert spec["resources"]["requests"]["ephemeral-storage"] == "20Gi"
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_llama2_example_gets_its_gpu_vllm_image_token_and_no_surge_rollout(chart: Chart) -> None:
    manifests = chart.render(files=(example("kserve-llama2"),))
    deployment = manifests.one("Deployment", chart.name("worker-llama2"))
    spec = container(deployment)
    assert spec["image"] == "ghcr.io/infergate/worker-vllm:0.1.0"
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(spec)["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    assert "--device" not in spec["args"]
    shm = next(v for v in pod_of(chart, manifests, "worker-llama2")["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_cpu_model_pulls_the_cpu_image(chart: Chart) -> None:
    manifests = chart.render({"models": {"m": {"runtime": "huggingface", "modelId": "org/m"}}})
    spec = container(manifests.one("Deployment", chart.name("worker-m")))
    assert spec["image"] == "ghcr.io/infergate/worker-hf:0.1.0"
    assert "--device" not in spec["args"]


# ------------------------------------------------------------- merged pod settings


def test_model_settings_merge_over_the_runtime(chart: Chart) -> None:
    model = {
        "modelId": "org/m",
        "resources": {"limits": {"memory": "48Gi"}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "nodeSelector": {"gpu": "h100"},
        "shmSize": "16Gi",
        "runtimeClassName": "nvidia",
        "priorityClassName": "serving",
        "podAnnotations": {"team": "ml"},
        "env": {"VLLM_LOGGING_LEVEL": "DEBUG"},
        "extraEnv": [{"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        "extraVolumes": [{"name": "extra", "configMap": {"name": "cm"}}],
        "extraVolumeMounts": [{"name": "extra", "mountPath": "/etc/extra"}],
        "initContainers": [{"name": "warm", "image": "busybox:1.36", "command": ["true"]}],
    }
    values = {
        "runtimes": {"vllm": {"nodeSelector": {"pool": "gpu"}, "podAnnotations": {"runtime": "vllm"}}},
        "models": {"m": model},
    }
    manifests = chart.render(values)
    deployment = manifests.one("Deployment", chart.name("worker-m"))
    pod = deployment["spec"]["template"]["spec"]
    spec = container(deployment)
    # Memory from the model, the GPU and the requests from the runtime.
    assert spec["resources"]["limits"] == {"memory": "48Gi", "nvidia.com/gpu": 1}
    assert spec["resources"]["requests"]["cpu"] == "4"
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu", "dedicated"]
    assert pod["nodeSelector"] == {"pool": "gpu", "gpu": "h100"}
    assert next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"]["sizeLimit"] == "16Gi"
    assert pod["runtimeClassName"] == "nvidia" and pod["priorityClassName"] == "serving"
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"runtime": "vllm", "team": "ml"}
    env = env_of(spec)
    assert env["VLLM_LOGGING_LEVEL"]["value"] == "DEBUG" and "secretKeyRef" in env["FROM_SECRET"]["valueFrom"]
    assert {"name": "extra", "mountPath": "/etc/extra"} in spec["volumeMounts"]
    assert {"name": "extra", "configMap": {"name": "cm"}} in pod["volumes"]
    assert [c["name"] for c in pod["initContainers"]] == ["warm"]


def test_model_without_shm_where_the_runtime_has_one(chart: Chart) -> None:
    manifests = chart.render({"models": {"m": {"modelId": "org/m", "shmSize": ""}}})
    assert all(v["name"] != "shm" for v in pod_of(chart, manifests, "worker-m")["volumes"])


# ------------------------------------------------------------- cache and storage


def test_cache_claim_per_model_or_shared(chart: Chart) -> None:
    values = {
        "models": {
            "own": {"modelId": "org/a", "cache": {"type": "pvc", "size": "200Gi", "storageClass": "fast"}},
            "shared": {"modelId": "org/b", "cache": {"type": "pvc", "existingClaim": "hf-cache"}},
        }
    }
    manifests = chart.render(values)
    claim = manifests.one("PersistentVolumeClaim", chart.name("worker-own-cache"))
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert manifests.names("PersistentVolumeClaim") == {chart.name("worker-own-cache")}
    own = next(v for v in pod_of(chart, manifests, "worker-own")["volumes"] if v["name"] == "cache")
    assert own["persistentVolumeClaim"]["claimName"] == chart.name("worker-own-cache")
    shared = next(v for v in pod_of(chart, manifests, "worker-shared")["volumes"] if v["name"] == "cache")
    assert shared["persistentVolumeClaim"]["claimName"] == "hf-cache"
    # A claim is not ephemeral storage.
    spec = container(manifests.one("Deployment", chart.name("worker-own")))
    assert "ephemeral-storage" not in spec["resources"]["requests"]


def test_storage_uri_is_downloaded_by_the_storage_initializer(chart: Chart) -> None:
    values = {
        "models": {"m": {"runtime": "huggingface", "storageUri": "s3://bucket/bert", "storageSecret": "s3"}}
    }
    manifests = chart.render(values)
    pod = pod_of(chart, manifests, "worker-m")
    init = pod["initContainers"][0]
    assert init["name"] == "storage-initializer"
    assert init["image"].startswith("docker.io/kserve/storage-initializer:")
    assert init["args"] == ["s3://bucket/bert", "/mnt/models"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert {"name": "model", "mountPath": "/mnt/models"} in init["volumeMounts"]
    assert flag_value(pod["containers"][0]["args"], "--model_id") == "/mnt/models"
    assert next(v for v in pod["volumes"] if v["name"] == "model")["emptyDir"]["sizeLimit"] == "100Gi"


def test_pvc_storage_uri_is_mounted(chart: Chart) -> None:
    manifests = chart.render({"models": {"m": {"storageUri": "pvc://models/llama/7b"}}})
    pod = pod_of(chart, manifests, "worker-m")
    assert "initContainers" not in pod
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/mnt/models")
    assert mount["subPath"] == "llama/7b" and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


# ------------------------------------------------------------- drain and probes


def test_drain_prestop_and_grace(chart: Chart) -> None:
    values = {"models": {"a": {"modelId": "org/a"}, "b": {"modelId": "org/b", "drainSeconds": 120}}}
    manifests = chart.render(values)
    router = manifests.one("Deployment", chart.name("router"))
    spec = container(router)
    assert env_of(spec)["INFERGATE_DRAIN_S"]["value"] == "30"
    assert router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/"
    for name, drain in (("worker-a", 60), ("worker-b", 120)):
        deployment = manifests.one("Deployment", chart.name(name))
        assert env_of(container(deployment))["INFERGATE_DRAIN_S"]["value"] == str(drain)
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == drain + 15
    for deployment in manifests.of_kind("Deployment"):
        assert container(deployment)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    registry = manifests.one("Deployment", chart.name("registry"))
    assert registry["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45


def test_redis_caps_memory_without_eviction(chart: Chart) -> None:
    manifests = chart.render({"redis": {"maxmemory": "3gb"}})
    command = container(manifests.one("StatefulSet", chart.name("redis")))["command"]
    assert command[command.index("--maxmemory") + 1] == "3gb"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


# ------------------------------------------------------------- images


def test_private_registry_and_pull_secrets(chart: Chart) -> None:
    values = {
        "global": {"imageRegistry": "registry.corp:5000", "imagePullSecrets": ["corp-pull"]},
        "imagePullSecrets": [{"name": "extra"}],
        "models": {"m": {"modelId": "org/m"}},
    }
    manifests = chart.render(values)
    images = {
        c["image"]
        for d in [*manifests.of_kind("Deployment"), *manifests.of_kind("StatefulSet")]
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {
        "registry.corp:5000/infergate/router:0.1.0",
        "registry.corp:5000/infergate/registry:0.1.0",
        "registry.corp:5000/infergate/worker-vllm:0.1.0",
        "registry.corp:5000/library/redis:7.4.2-alpine",
    }
    for deployment in manifests.of_kind("Deployment"):
        secrets = deployment["spec"]["template"]["spec"]["imagePullSecrets"]
        assert secrets == [{"name": "corp-pull"}, {"name": "extra"}]


# ------------------------------------------------------------- metrics and autoscaling


def test_metrics_ports_are_scraped_but_never_routed(chart: Chart) -> None:
    values = {
        "domains": ["example.com"],
        "models": {"m": {"modelId": "org/m"}},
        "router": {"httpRoute": {"enabled": False}},
    }
    manifests = chart.render(values, *ADDONS)
    router_spec = container(manifests.one("Deployment", chart.name("router")))
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in router_spec["ports"]
    assert env_of(router_spec)["INFERGATE_METRICS_BIND"]["value"] == "0.0.0.0:9090"
    service = manifests.one("Service", chart.name("router"))
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"http": 80, "metrics": 9090}
    for ingress in manifests.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["port"] == {"number": 80}
    monitor = manifests.one("ServiceMonitor", chart.name("router"))
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    workers = manifests.one("ServiceMonitor", chart.name("worker"))
    assert workers["spec"]["endpoints"][0]["port"] == "metrics"
    assert workers["spec"]["targetLabels"] == ["infergate.io/model"]
    route = chart.render(
        {**values, "router": {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}}}, *ADDONS
    ).one("HTTPRoute", chart.name("router"))
    assert route["spec"]["rules"][0]["backendRefs"][0]["port"] == 80


def keda_trigger(chart: Chart, **keda: Any) -> dict[str, Any]:
    settings = {"enabled": True, "maxReplicaCount": 3, "prometheusAddress": "http://prom:9090", **keda}
    manifests = chart.render(
        {"models": {"m": {"modelId": "org/m", "keda": settings}}},
        "--namespace",
        "serving",
        "--api-versions",
        "keda.sh/v1alpha1",
    )
    scaled = manifests.one("ScaledObject", chart.name("worker-m"))
    assert scaled["spec"]["minReplicaCount"] >= 1
    return dict(scaled["spec"]["triggers"][0])


def test_keda_scales_on_in_flight_by_default_with_namespace_and_release(chart: Chart) -> None:
    trigger = keda_trigger(chart)
    assert trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    router = chart.name("router")
    assert (
        query
        == f'sum(infergate_router_requests_in_flight{{namespace="serving",service="{router}",model="m"}})'
    )
    assert trigger["metadata"]["threshold"] == "8"


def test_keda_on_waiting_requests_or_tokens_per_second(chart: Chart) -> None:
    waiting = keda_trigger(chart, metric="waiting", target=3)["metadata"]
    worker = chart.name("worker-m")
    assert (
        waiting["query"]
        == f'sum(infergate_worker_requests_waiting{{namespace="serving",service="{worker}"}})'
    )
    assert waiting["threshold"] == "3"
    tokens = keda_trigger(chart, metric="outputTokensPerSecond", window="3m")["metadata"]
    assert re.fullmatch(
        r'sum\(rate\(infergate_router_output_tokens_total\{namespace="serving",.*\}\[3m\]\)\)',
        tokens["query"],
    )
    # The first setting's spelling still means a tokens/s target.
    legacy = keda_trigger(chart, outputTokensPerSecond=900)["metadata"]
    assert "[2m]" in legacy["query"] and legacy["threshold"] == "900"


def test_keda_scale_to_zero_is_refused_with_the_reason(chart: Chart) -> None:
    values = {
        "models": {
            "m": {
                "modelId": "org/m",
                "keda": {
                    "enabled": True,
                    "maxReplicaCount": 3,
                    "minReplicaCount": 0,
                    "prometheusAddress": "http://p",
                },
            }
        }
    }
    result = chart.run("template", values, "--api-versions", "keda.sh/v1alpha1")
    assert result.returncode != 0
    assert "nothing holds them while a replica starts" in result.stderr


def test_grafana_dashboard_configmap_and_queries(chart: Chart) -> None:
    manifests = chart.render({})
    configmap = manifests.one("ConfigMap", chart.name("dashboard"))
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["infergate.json"])
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Time to first token",
        "Time per output token",
        "Output tokens per second",
        "Requests per second by status",
        "Errors per second",
        "Requests in flight and waiting",
        "Queue time in the worker",
        "Replicas serving",
    } <= titles
    exported = set()
    for source in (
        "services/router/infergate_router/metrics.py",
        "services/common/infergate_common/worker_metrics.py",
    ):
        exported |= set(re.findall(r'"(infergate_\w+)"', (ROOT / source).read_text()))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b(infergate_\w+?)(?:_bucket|_total)?\{", target["expr"]):
                assert name in exported, f"{panel['title']}: {name} is not a metric infergate exports"
    # The file in the chart is what ci/dashboard.py writes.
    sys.path.insert(0, str(ROOT / "ci"))
    import dashboard as generator

    assert (
        json.loads((ROOT / "charts/infergate/dashboards/infergate.json").read_text()) == generator.dashboard()
    )


# ------------------------------------------------------------- ingress


def test_domain_groups_get_their_own_ingress_class_and_tls(chart: Chart) -> None:
    values = {
        "domains": ["example.com", "internal.corp"],
        "router": {
            "ingress": {
                "className": "public",
                "host": "api.example.com",
                "wildcard": True,
                "domainGroups": {
                    "internal": {
                        "domains": ["internal.corp"],
                        "className": "private",
                        "tls": [{"hosts": ["*.internal.corp"]}],
                    }
                },
            }
        },
        "models": {"llama": {"modelId": "org/l"}, "minilm": {"runtime": "huggingface", "modelId": "org/m"}},
    }
    manifests = chart.render(values)
    public = manifests.one("Ingress", chart.name("router"))
    private = manifests.one("Ingress", chart.name("router-internal"))
    assert public["spec"]["ingressClassName"] == "public"
    assert [r["host"] for r in public["spec"]["rules"]] == ["*.example.com"]
    assert private["spec"]["ingressClassName"] == "private"
    assert sorted(r["host"] for r in private["spec"]["rules"]) == [
        "llama.internal.corp",
        "minilm.internal.corp",
    ]
    assert private["spec"]["tls"] == [{"hosts": ["*.internal.corp"]}]


def test_nginx_limits_match_the_router(chart: Chart) -> None:
    values = {
        "router": {
            "config": {"maxBodyBytes": 16777216, "requestTimeoutS": 900},
            "ingress": {"annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "on"}},
        }
    }
    annotations = chart.render(values).one("Ingress", chart.name("router"))["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "16384k"
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "900"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "900"
    # The user's own annotations win.
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "on"
    off = chart.render({"router": {"ingress": {"nginxAnnotations": False}}}).one(
        "Ingress", chart.name("router")
    )
    assert "annotations" not in off["metadata"]


# ------------------------------------------------------------- add-on schemas


def test_addon_kinds_match_their_crd_schemas(chart: Chart, tmp_path: Path) -> None:
    values = {
        "models": {
            "m": {
                "modelId": "org/m",
                "keda": {"enabled": True, "maxReplicaCount": 2, "prometheusAddress": "http://p"},
            }
        },
        "router": {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}},
    }
    manifests = chart.render(values, *ADDONS)
    schemas = validate_addons.load_schemas()
    addons = [doc for doc in manifests if validate_addons.is_addon(doc)]
    assert {doc["kind"] for doc in addons} == {"ServiceMonitor", "ScaledObject", "HTTPRoute"}
    for doc in addons:
        assert validate_addons.errors_of(doc, schemas) == []
    # Strict: a misspelt field fails, as kubernetes-validate --strict does for built-in kinds.
    broken = json.loads(json.dumps(manifests.one("ServiceMonitor", chart.name("router"))))
    broken["spec"]["endpoints"][0]["intervall"] = "30s"
    assert any("intervall" in error for error in validate_addons.errors_of(broken, schemas))
    scaled = json.loads(json.dumps(manifests.one("ScaledObject", chart.name("worker-m"))))
    scaled["spec"]["maxReplicaCount"] = "three"
    assert validate_addons.errors_of(scaled, schemas)
