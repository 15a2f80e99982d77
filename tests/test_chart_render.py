"""The manifests charts/infergate renders: labels and selectors, one worker per
model, GPU resources, host names, probes, image tags, and the optional
resources that appear only when the cluster has their API."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from chart_fixtures import (
    CHART_DIR,
    EXAMPLES_DIR,
    Chart,
    Manifests,
    RenderFailed,
    container,
    env_of,
    example,
    flag_value,
    helm_binary,
)

RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
)
WORKLOADS = ("Deployment", "StatefulSet")
ADDON_APIS = ("monitoring.coreos.com/v1", "keda.sh/v1alpha1", "gateway.networking.k8s.io/v1")


def api_args(*apis: str) -> list[str]:
    return [arg for api in apis for arg in ("--api-versions", api)]


@pytest.fixture(scope="module")
def chart() -> Chart:
    return Chart(helm_binary())


@pytest.fixture(scope="module")
def app_version() -> str:
    return str(yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"])


@pytest.fixture(scope="module")
def two_models(chart: Chart) -> Manifests:
    return chart.render(files=(example("two-models-two-domains"),))


@pytest.fixture(scope="module")
def llama2(chart: Chart) -> Manifests:
    return chart.render(files=(example("kserve-llama2"),))


@pytest.fixture(scope="module")
def bert(chart: Chart) -> Manifests:
    return chart.render(files=(example("kserve-bert"),))


def worker(chart: Chart, manifests: Manifests, model: str) -> dict[str, Any]:
    return manifests.one("Deployment", chart.name(f"worker-{model}"))


# ------------------------------------------------------------ labels, selectors


@pytest.mark.parametrize("values_file", [None, *sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml"))])
def test_every_resource_carries_the_recommended_labels(chart: Chart, values_file: str | None) -> None:
    files = (example(values_file),) if values_file else ()
    manifests = chart.render(None, *api_args(*ADDON_APIS), files=files)
    for doc in manifests:
        labels = doc["metadata"].get("labels", {})
        missing = [label for label in RECOMMENDED_LABELS if label not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == chart.release


def test_selectors_match_their_pods_and_services_find_them(chart: Chart, two_models: Manifests) -> None:
    workloads = [doc for doc in two_models if doc["kind"] in WORKLOADS]
    pod_labels = {}
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
        pod_labels[workload["metadata"]["name"]] = labels
    # Selectors never overlap: each workload owns its pods alone.
    for name, workload in zip(pod_labels, workloads, strict=True):
        selector = workload["spec"]["selector"]["matchLabels"]
        owners = [other for other, labels in pod_labels.items() if selector.items() <= labels.items()]
        assert owners == [name]
    for service in two_models.of_kind("Service"):
        selector = service["spec"]["selector"]
        targets = [name for name, labels in pod_labels.items() if selector.items() <= labels.items()]
        assert targets == [service["metadata"]["name"]], service["metadata"]["name"]
        # Named target ports exist on the selected pods' containers.
        workload = next(w for w in workloads if w["metadata"]["name"] == targets[0])
        port_names = {
            p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_pod_disruption_budgets_and_network_policies_select_real_pods(chart: Chart) -> None:
    manifests = chart.render(
        {"networkPolicy": {"enabled": True}, "models": {"m": {"modelId": "org/m", "replicas": 2}}}
    )
    pods = [doc["spec"]["template"]["metadata"]["labels"] for doc in manifests if doc["kind"] in WORKLOADS]
    budgets = manifests.of_kind("PodDisruptionBudget")
    assert manifests.names("PodDisruptionBudget") == {chart.name("router"), chart.name("worker-m")}
    policies = manifests.of_kind("NetworkPolicy")
    assert len(policies) == 4
    for doc in budgets + policies:
        key = "selector" if doc["kind"] == "PodDisruptionBudget" else "podSelector"
        selector = doc["spec"][key]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pods), doc["metadata"]["name"]


# --------------------------------------------------------------------- workers


def test_one_worker_deployment_and_service_per_model(chart: Chart, two_models: Manifests) -> None:
    expected = {chart.name("worker-llama"), chart.name("worker-minilm")}
    assert {n for n in two_models.names("Deployment") if "-worker-" in n} == expected
    assert {n for n in two_models.names("Service") if "-worker-" in n} == expected
    more = chart.render(
        {"models": {"extra": {"modelId": "org/extra"}}}, files=(example("two-models-two-domains"),)
    )
    assert chart.name("worker-extra") in more.names("Deployment")
    assert chart.name("worker-extra") in more.names("Service")
    for model in ("llama", "minilm", "extra"):
        labels = worker(chart, more, model)["spec"]["template"]["metadata"]["labels"]
        assert labels["infergate.io/model"] == model
        assert labels["app.kubernetes.io/component"] == "worker"


def test_defaults_render_no_worker(chart: Chart) -> None:
    manifests = chart.render()
    assert not [n for n in manifests.names("Deployment") if "-worker-" in n]
    assert manifests.names("Deployment") == {
        chart.name("router"),
        chart.name("registry"),
        chart.name("batch"),
    }
    assert manifests.names("StatefulSet") == {chart.name("redis")}


def test_llama2_example_runs_vllm_with_the_announcement_resources(chart: Chart, llama2: Manifests) -> None:
    spec = container(worker(chart, llama2, "llama2"))
    assert spec["command"] == ["python", "-m", "infergate_worker_vllm"]
    args = spec["args"]
    assert flag_value(args, "--backend") == "vllm"
    assert flag_value(args, "--model_name") == "llama2"
    assert flag_value(args, "--model_id") == "meta-llama/Llama-2-7b-chat-hf"
    resources = spec["resources"]
    assert resources["limits"] == {"cpu": "6", "memory": "24Gi", "nvidia.com/gpu": 1}
    # The emptyDir model cache's size is asked for as ephemeral storage.
    assert resources["requests"] == {
        "cpu": "6",
        "memory": "24Gi",
        "nvidia.com/gpu": 1,
        "ephemeral-storage": "100Gi",
    }
    token = env_of(spec)["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "hf-token", "key": "HF_TOKEN"}
    assert spec["image"].startswith("ghcr.io/infergate/worker-vllm:")


def test_bert_example_runs_worker_hf_with_kserve_args(chart: Chart, bert: Manifests) -> None:
    spec = container(worker(chart, bert, "bert"))
    assert spec["command"] == ["python", "-m", "infergate_worker_hf"]
    args = spec["args"]
    assert "--backend" not in args
    assert flag_value(args, "--model_id") == "bert-base-uncased"
    assert flag_value(args, "--tensor_input_names") == "input_ids"
    assert spec["resources"]["limits"] == {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": 1}
    assert spec["image"].startswith("ghcr.io/infergate/worker-hf:")
    assert "HF_TOKEN" not in env_of(spec)


def test_worker_reaches_the_registry_and_redis_services_it_names(chart: Chart, two_models: Manifests) -> None:
    registry = two_models.one("Service", chart.name("registry"))
    redis = two_models.one("Service", chart.name("redis"))
    spec = container(worker(chart, two_models, "llama"))
    args, env = spec["args"], env_of(spec)
    assert flag_value(args, "--registry_url") == (
        f"http://{registry['metadata']['name']}:{registry['spec']['ports'][0]['port']}"
    )
    # Kubernetes expands $(VAR) from the container's env.
    assert flag_value(args, "--redis_url") == "$(INFERGATE_REDIS_URL)"
    password = "$(INFERGATE_REDIS_PASSWORD)"
    assert env["INFERGATE_REDIS_URL"]["value"] == f"redis://:{password}@{redis['metadata']['name']}:6379/0"
    port = spec["ports"][0]["containerPort"]
    assert flag_value(args, "--port") == str(port)
    assert flag_value(args, "--advertise_url") == f"http://$(POD_IP):{port}"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    router = container(two_models.one("Deployment", chart.name("router")))
    router_env = env_of(router)
    assert router["command"] == [
        "gunicorn", "--config", "python:infergate_router.gunicorn_conf", "infergate_router.wsgi:app",
    ]  # fmt: skip
    assert router_env["INFERGATE_REGISTRY_URL"]["value"] == flag_value(args, "--registry_url")
    assert router_env["INFERGATE_REDIS_URL"] == env["INFERGATE_REDIS_URL"]


def test_runtime_defaults_and_model_overrides(chart: Chart) -> None:
    manifests = chart.render(
        {
            "models": {
                "auto": {"modelId": "org/a"},
                "hf": {"runtime": "huggingface", "modelId": "org/b", "resources": {"limits": {"cpu": "2"}}},
            },
            "runtimes": {"vllm": {"args": ["--enforce-eager"]}},
        }
    )
    auto = container(worker(chart, manifests, "auto"))
    assert flag_value(auto["args"], "--backend") == "auto"
    assert auto["args"][-1] == "--enforce-eager"
    assert auto["resources"]["limits"]["nvidia.com/gpu"] == 1
    hf = container(worker(chart, manifests, "hf"))
    # Merged key by key over the runtime's defaults.
    assert hf["resources"] == {
        "limits": {"cpu": "2", "memory": "8Gi"},
        "requests": {"cpu": "1", "memory": "4Gi", "ephemeral-storage": "20Gi"},
    }
    assert "--enforce-eager" not in hf["args"]


def test_model_from_a_volume_is_served_from_mnt_models(chart: Chart) -> None:
    manifests = chart.render(
        {
            "models": {
                "local": {"storage": {"pvc": "models", "subPath": "llama"}},
                "cached": {"modelId": "org/m", "storage": {"hostPath": "/data/hf", "hfCache": True}},
            }
        }
    )
    local = worker(chart, manifests, "local")["spec"]["template"]["spec"]
    args = local["containers"][0]["args"]
    assert flag_value(args, "--model_id") == "/mnt/models"
    mount = next(m for m in local["containers"][0]["volumeMounts"] if m["mountPath"] == "/mnt/models")
    assert mount["readOnly"] is True and mount["subPath"] == "llama"
    volume = next(v for v in local["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == "models"
    cached = worker(chart, manifests, "cached")["spec"]["template"]["spec"]
    assert flag_value(cached["containers"][0]["args"], "--model_id") == "org/m"
    assert env_of(cached["containers"][0])["HF_HUB_CACHE"]["value"] == "/mnt/models"
    assert any(v.get("hostPath", {}).get("path") == "/data/hf" for v in cached["volumes"])


def test_worker_probes_wait_for_the_model(chart: Chart, llama2: Manifests, bert: Manifests) -> None:
    for manifests, model in ((llama2, "llama2"), (bert, "bert")):
        spec = container(worker(chart, manifests, model))
        startup = spec["startupProbe"]
        assert startup["httpGet"]["path"] == "/readyz"
        # Big models take long to download and load.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
        assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
        port_names = {p["name"] for p in spec["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert spec[probe]["httpGet"]["port"] in port_names
    tuned = chart.render({"models": {"m": {"modelId": "org/m", "startupProbe": {"failureThreshold": 720}}}})
    startup = container(worker(chart, tuned, "m"))["startupProbe"]
    assert (startup["failureThreshold"], startup["periodSeconds"]) == (720, 10)


def test_update_strategy_passes_through(chart: Chart) -> None:
    strategy = {"type": "Recreate"}
    manifests = chart.render(
        {"models": {"a": {"modelId": "org/a", "strategy": strategy}, "b": {"modelId": "org/b"}}}
    )
    assert worker(chart, manifests, "a")["spec"]["strategy"] == strategy
    # b asks for the vLLM runtime's GPU: no surge pod, which would wait for a free GPU.
    assert worker(chart, manifests, "b")["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    cpu = chart.render({"models": {"c": {"runtime": "huggingface", "modelId": "org/c"}}})
    assert "strategy" not in worker(chart, cpu, "c")["spec"]


def test_gpu_models_tolerate_the_gpu_taint(chart: Chart, llama2: Manifests) -> None:
    pod = worker(chart, llama2, "llama2")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


# ------------------------------------------------------------- hosts, routing


def test_ingress_hosts_are_model_domains_and_extra_hosts(chart: Chart, two_models: Manifests) -> None:
    ingress = two_models.one("Ingress", chart.name("router"))
    hosts = [rule.get("host") for rule in ingress["spec"]["rules"]]
    assert sorted(hosts) == sorted(
        [
            "infergate.example.com",
            "llama.example.com",
            "llama.internal.corp",
            "chat.example.com",
            "minilm.example.com",
            "minilm.internal.corp",
            "minilm.search.internal.corp",
        ]
    )
    router_service = two_models.one("Service", chart.name("router"))
    for rule in ingress["spec"]["rules"]:
        backend = rule["http"]["paths"][0]["backend"]["service"]
        assert backend == {
            "name": router_service["metadata"]["name"],
            "port": {"number": router_service["spec"]["ports"][0]["port"]},
        }
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_workers_register_their_domains_hosts_and_restriction(chart: Chart, two_models: Manifests) -> None:
    llama = container(worker(chart, two_models, "llama"))["args"]
    minilm = container(worker(chart, two_models, "minilm"))["args"]
    assert flag_value(llama, "--domains") == "example.com,internal.corp"
    assert flag_value(llama, "--hosts") == "chat.example.com"
    assert "--restricted" not in llama
    assert flag_value(minilm, "--domains") == "example.com,internal.corp,search.internal.corp"
    assert "--restricted" in minilm
    assert "--hosts" not in minilm


def test_routing_policy_reaches_the_worker_and_bad_ones_are_refused(chart: Chart) -> None:
    manifests = chart.render(
        {
            "models": {
                "chat": {"modelId": "org/a", "routingPolicy": "prefix_aware"},
                "plain": {"modelId": "org/b"},
            }
        }
    )
    assert (
        flag_value(container(worker(chart, manifests, "chat"))["args"], "--routing_policy") == "prefix_aware"
    )
    assert "--routing_policy" not in container(worker(chart, manifests, "plain"))["args"]
    with pytest.raises(RenderFailed, match="routingPolicy"):
        chart.render({"models": {"chat": {"modelId": "org/a", "routingPolicy": "round_robin"}}})


def test_ingress_without_router_host_catches_the_rest(chart: Chart) -> None:
    manifests = chart.render({"domains": ["example.com"], "models": {"m": {"modelId": "org/m"}}})
    rules = manifests.one("Ingress", chart.name("router"))["spec"]["rules"]
    assert [rule.get("host") for rule in rules] == ["m.example.com", None]


def test_httproute_replaces_the_ingress_only_with_the_gateway_api(chart: Chart) -> None:
    values = {
        "router": {
            "ingress": {"host": "ai.example.com"},
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]},
        },
        "domains": ["example.com"],
        "models": {"m": {"modelId": "org/m"}},
    }
    without = chart.render(values)
    assert "HTTPRoute" not in without.kinds()
    assert "Ingress" in without.kinds()
    with_api = chart.render(values, *api_args("gateway.networking.k8s.io/v1"))
    assert "Ingress" not in with_api.kinds()
    route = with_api.one("HTTPRoute", chart.name("router"))
    assert route["spec"]["hostnames"] == ["ai.example.com", "m.example.com"]
    assert route["spec"]["parentRefs"] == [{"name": "gw"}]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": chart.name("router"), "port": 80}]


# --------------------------------------------------------- optional resources


def test_addon_resources_render_only_when_their_api_is_present(chart: Chart) -> None:
    keda = {"enabled": True, "maxReplicaCount": 4, "prometheusAddress": "http://prom:9090"}
    values = {"models": {"m": {"modelId": "org/m", "keda": keda}}}
    bare = chart.render(values)
    assert not {"ServiceMonitor", "ScaledObject", "HTTPRoute"} & bare.kinds()
    # Without KEDA the Deployment keeps its replica count.
    assert worker(chart, bare, "m")["spec"]["replicas"] == 1
    full = chart.render(values, *api_args(*ADDON_APIS))
    monitor = full.one("ServiceMonitor", chart.name("router"))
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    scaled = full.one("ScaledObject", chart.name("worker-m"))
    assert scaled["spec"]["scaleTargetRef"]["name"] == chart.name("worker-m")
    assert scaled["spec"]["maxReplicaCount"] == 4
    assert 'model="m"' in scaled["spec"]["triggers"][0]["metadata"]["query"]
    # KEDA owns the replica count now.
    assert "replicas" not in worker(chart, full, "m")["spec"]
    assert "HorizontalPodAutoscaler" not in full.kinds()


def test_servicemonitor_can_be_turned_off(chart: Chart) -> None:
    off = chart.render({"router": {"serviceMonitor": {"enabled": False}}}, *api_args(*ADDON_APIS))
    assert "ServiceMonitor" not in off.kinds()


def test_horizontal_pod_autoscaler_per_model(chart: Chart) -> None:
    manifests = chart.render(
        {
            "models": {
                "scaled": {"modelId": "org/a", "autoscaling": {"enabled": True, "maxReplicas": 3}},
                "fixed": {"modelId": "org/b", "replicas": 2},
            }
        }
    )
    assert manifests.names("HorizontalPodAutoscaler") == {chart.name("worker-scaled")}
    hpa = manifests.one("HorizontalPodAutoscaler", chart.name("worker-scaled"))
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": chart.name("worker-scaled"),
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert "replicas" not in worker(chart, manifests, "scaled")["spec"]
    assert worker(chart, manifests, "fixed")["spec"]["replicas"] == 2
    # A budget for each model that has two pods or more; none for a single replica.
    single = chart.render({"models": {"one": {"modelId": "org/a"}}})
    assert single.names("PodDisruptionBudget") == {chart.name("router")}


def test_network_policies_only_when_enabled(chart: Chart, two_models: Manifests) -> None:
    off = chart.render({"networkPolicy": {"enabled": False}}, files=(example("two-models-two-domains"),))
    assert "NetworkPolicy" not in off.kinds()
    # On by default.
    on = two_models
    workers_policy = on.one("NetworkPolicy", chart.name("worker"))
    allowed = workers_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed["app.kubernetes.io/component"] == "router"


def test_external_redis_replaces_the_statefulset(chart: Chart) -> None:
    url = "redis://redis.example:6379/2"
    manifests = chart.render(
        {"redis": {"enabled": False, "external": {"url": url}}, "models": {"m": {"modelId": "org/m"}}}
    )
    assert "StatefulSet" not in manifests.kinds()
    assert chart.name("redis") not in manifests.names("Service")
    for deployment in manifests.of_kind("Deployment"):
        assert env_of(container(deployment))["INFERGATE_REDIS_URL"]["value"] == url


def test_redis_statefulset_keeps_its_data_on_a_volume(chart: Chart) -> None:
    statefulset = chart.render().one("StatefulSet", chart.name("redis"))
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    mount = container(statefulset)["volumeMounts"][0]
    assert mount == {"name": claim["metadata"]["name"], "mountPath": "/data"}
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"


def test_registry_is_not_exposed(chart: Chart, two_models: Manifests) -> None:
    assert two_models.one("Service", chart.name("registry"))["spec"]["type"] == "ClusterIP"
    ingress = two_models.one("Ingress", chart.name("router"))
    backends = {r["http"]["paths"][0]["backend"]["service"]["name"] for r in ingress["spec"]["rules"]}
    assert backends == {chart.name("router")}


# --------------------------------------------------------- images and config


def test_image_tags_default_to_the_app_version(chart: Chart, two_models: Manifests, app_version: str) -> None:
    for doc in two_models:
        if doc["kind"] not in WORKLOADS:
            continue
        for spec in doc["spec"]["template"]["spec"]["containers"]:
            repository, tag = spec["image"].rsplit(":", 1)
            assert tag != "latest"
            if repository.startswith("ghcr.io/infergate/"):
                assert tag == app_version, spec["image"]
    pinned = chart.render({"router": {"image": {"tag": "1.2.3"}}})
    assert container(pinned.one("Deployment", chart.name("router")))["image"].endswith(":1.2.3")


def test_router_config_becomes_env_and_rolls_the_pods(chart: Chart) -> None:
    def router(values: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
        manifests = chart.render(values)
        config = manifests.one("ConfigMap", chart.name("router"))["data"]
        annotations = manifests.one("Deployment", chart.name("router"))["spec"]["template"]["metadata"]
        return config, annotations["annotations"]

    config, before = router({})
    assert config["INFERGATE_HEARTBEAT_DEADLINE_S"] == "3"
    assert config["INFERGATE_REQUEST_TIMEOUT_S"] == "600"
    # Large integers stay integers (YAML numbers reach templates as floats).
    assert config["INFERGATE_MAX_BODY_BYTES"] == "8388608"
    changed, after = router({"router": {"config": {"requestTimeoutS": 30}}})
    assert changed["INFERGATE_REQUEST_TIMEOUT_S"] == "30"
    assert before["checksum/config"] != after["checksum/config"]
    _, with_keys = router({"router": {"apiKeys": ["k1"]}})
    assert with_keys["checksum/secret"] != before["checksum/secret"]


def test_api_keys_reach_the_router_from_a_secret(chart: Chart) -> None:
    manifests = chart.render({"router": {"apiKeys": ["k1", "k2"]}})
    secret = manifests.one("Secret", chart.name("router"))
    assert set(secret["data"]) == {"api-keys"}
    ref = env_of(container(manifests.one("Deployment", chart.name("router"))))["INFERGATE_API_KEYS"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": chart.name("router"), "key": "api-keys"}
    assert "INFERGATE_API_KEYS" not in env_of(
        container(chart.render().one("Deployment", chart.name("router")))
    )


# ------------------------------------------------------------ schema, notes, test


@pytest.mark.parametrize(
    "values",
    [
        {"router": {"replicas": "two"}},
        {"models": {"m": {"runtime": "tgi", "modelId": "org/m"}}},
        {"models": {"m": {"runtime": "vllm"}}},
        {"models": {"m": {"modelID": "org/m"}}},
        {"models": {"Bad_Name": {"modelId": "org/m"}}},
        {"redis": {"enabled": False}},
        {"router": {"httpRoute": {"enabled": True}}},
    ],
    ids=[
        "replicas-string",
        "unknown-runtime",
        "no-model-source",
        "misspelt-field",
        "bad-name",
        "no-redis",
        "route-without-gateway",
    ],
)
def test_schema_rejects_bad_values(chart: Chart, values: dict[str, Any]) -> None:
    with pytest.raises(RenderFailed, match=r"schema|required"):
        chart.render(values)


def test_helm_test_pod_calls_the_router(chart: Chart) -> None:
    manifests = chart.render()
    pod = manifests.one("Pod", chart.name("router-test"))
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]["containers"][0]
    script = "\n".join(spec["args"])
    assert '"$ROUTER/"' in script and '"$ROUTER/openai/v1/models"' in script
    router = env_of(spec)["ROUTER"]["value"]
    assert router == f"http://{chart.name('router')}:80"


def test_notes_give_a_curl_and_the_openai_base_url(chart: Chart) -> None:
    notes = chart.notes(files=(example("two-models-two-domains"),))
    assert "curl http://infergate.example.com/openai/v1/models" in notes
    assert 'base_url="http://infergate.example.com/openai/v1"' in notes
    assert "llama: llama.example.com, llama.internal.corp, chat.example.com" in notes
    local = chart.notes(files=(example("kserve-llama2"),))
    assert f"svc/{chart.name('router')} 8080:80" in local
    assert 'base_url="http://127.0.0.1:8080/openai/v1"' in local
    assert '"model": "llama2"' in local


def test_every_value_is_documented_by_a_comment_starting_with_its_name() -> None:
    undocumented = []
    comment = ""  # the first line of the comment block right above the current line
    item_indent = None  # the indentation of the keys of the list item being read
    for number, line in enumerate((CHART_DIR / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            comment = comment or stripped
            continue
        if item_indent is not None and stripped and indent < item_indent:
            item_indent = None
        if stripped.startswith("- "):
            # Keys inside list items (tolerations, ...) are data, not values to document.
            item_indent = indent + 2
        key = re.match(r"^\s*([A-Za-z][\w./-]*):", line)
        if key and item_indent is None and not comment.startswith(f"# {key.group(1)} "):
            undocumented.append(f"{number}: {key.group(1)}")
        comment = ""
    assert not undocumented
