"""The chart's security defaults, rendered with a real helm: publishing the
router without keys fails with one clear line, keys reach the router as a
file of digests, the generated credentials reach every service and survive
upgrades, Redis requires its password, NetworkPolicies are on."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from chart_fixtures import (
    CHART_DIR,
    RELEASE,
    Chart,
    Manifest,
    Manifests,
    RenderFailed,
    container,
    env_of,
    helm_binary,
)

from infergate_common.api_keys import digest
from infergate_router.auth.keystore import parse_keys_file

GATEWAY = ("--api-versions", "gateway.networking.k8s.io/v1")
MODEL = {"models": {"m": {"modelId": "org/m"}}}


@pytest.fixture(scope="module")
def chart() -> Chart:
    # The chart's own defaults, nothing opened for the test.
    return Chart(helm_binary(), base=None)


def deployment_env(chart: Chart, manifests: Manifests, name: str) -> dict[str, Manifest]:
    return env_of(container(manifests.one("Deployment", chart.name(name))))


def secret_data(manifests: Manifests, name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in manifests.one("Secret", name)["data"].items()}


def test_publishing_without_keys_fails_with_one_clear_line(chart: Chart) -> None:
    for values, extra in (
        (MODEL, ()),
        (
            {
                **MODEL,
                "router": {
                    "ingress": {"enabled": False},
                    "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]},
                },
            },
            GATEWAY,
        ),
    ):
        result = chart.run("template", values, *extra)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1, result.stderr
        assert "without API keys" in errors[0] and "router.auth.allowAnonymous=true" in errors[0]


@pytest.mark.parametrize(
    "auth",
    [
        {"allowAnonymous": True},
        {"adminKeys": True},
        {"existingSecret": "my-keys"},
        {"keys": {"team-a": {"keySha256": "a" * 64}}},
    ],
)
def test_keys_or_an_explicit_choice_let_it_render(chart: Chart, auth: dict[str, object]) -> None:
    manifests = chart.render({**MODEL, "router": {"auth": auth}})
    env = deployment_env(chart, manifests, "router")
    assert env["INFERGATE_REQUIRE_API_KEY"]["value"] == ("false" if auth.get("allowAnonymous") else "true")


def test_unpublished_routers_still_require_keys(chart: Chart) -> None:
    manifests = chart.render({**MODEL, "router": {"ingress": {"enabled": False}}})
    assert "Ingress" not in manifests.kinds()
    assert deployment_env(chart, manifests, "router")["INFERGATE_REQUIRE_API_KEY"]["value"] == "true"


def test_keys_reach_the_router_as_a_file_of_digests(chart: Chart) -> None:
    secret_key = "igk-chart-test-key"
    values = {
        **MODEL,
        "router": {
            "auth": {
                "keys": {
                    "team-a": {
                        "keySha256": digest(secret_key),
                        "models": ["m", "llama-*"],
                        "rpm": 60,
                        "tpm": 5000,
                    },
                    "team-b": {"keySha256": digest("other"), "maxConcurrent": 2, "metadata": {"owner": "b"}},
                }
            }
        },
    }
    manifests = chart.render(values)
    keys_file = secret_data(manifests, chart.name("router-keys"))["keys.json"]
    assert secret_key not in keys_file
    records = {r.id: r for r in parse_keys_file(keys_file)}
    assert records["team-a"].key_sha256 == digest(secret_key)
    assert records["team-a"].models == ["m", "llama-*"] and records["team-a"].rpm == 60
    assert records["team-b"].max_concurrent == 2 and records["team-b"].models == ["*"]
    router = manifests.one("Deployment", chart.name("router"))
    spec = container(router)
    path = env_of(spec)["INFERGATE_API_KEYS_FILE"]["value"]
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "keys")
    assert path == f"{mount['mountPath']}/keys.json" and mount["readOnly"] is True
    volume = next(v for v in router["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys")
    assert volume["secret"]["secretName"] == chart.name("router-keys")
    # A change of keys rolls nothing: the router reads the file again. The checksum still tracks it.
    assert "checksum/keys" in router["spec"]["template"]["metadata"]["annotations"]

    existing = chart.render({**MODEL, "router": {"auth": {"existingSecret": "team-keys"}}})
    assert chart.name("router-keys") not in existing.names("Secret")
    volumes = existing.one("Deployment", chart.name("router"))["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "keys")["secret"]["secretName"] == "team-keys"


@pytest.mark.parametrize(
    "keys",
    [
        {"Team_A": {"keySha256": "a" * 64}},
        {"team-a": {"models": ["m"]}},
        {"team-a": {"keySha256": "not-a-digest"}},
        {"team-a": {"keySha256": "a" * 64, "key": "plain"}},
    ],
)
def test_the_schema_rejects_bad_keys(chart: Chart, keys: dict[str, object]) -> None:
    with pytest.raises(RenderFailed):
        chart.render({**MODEL, "router": {"auth": {"keys": keys}}})


def test_generated_credentials_reach_every_service(chart: Chart) -> None:
    manifests = chart.render({**MODEL, "router": {"auth": {"adminKeys": True}}})
    internal = chart.name("internal")
    data = secret_data(manifests, internal)
    assert set(data) == {"internal-token", "admin-token", "redis-password"}
    assert len(data["internal-token"]) >= 40 and len(set(data.values())) == 3
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["redis-password"])  # safe inside a URL
    for name in ("router", "registry", "worker-m"):
        env = deployment_env(chart, manifests, name)
        assert env["INFERGATE_INTERNAL_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": internal,
            "key": "internal-token",
        }
        assert env["INFERGATE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password"
        assert "$(INFERGATE_REDIS_PASSWORD)@" in env["INFERGATE_REDIS_URL"]["value"]
        # $(VAR) expands only from variables defined earlier in the list.
        names = [e["name"] for e in container(manifests.one("Deployment", chart.name(name)))["env"]]
        assert names.index("INFERGATE_REDIS_PASSWORD") < names.index("INFERGATE_REDIS_URL")
    registry = deployment_env(chart, manifests, "registry")
    assert registry["INFERGATE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": internal,
        "key": "admin-token",
    }
    assert registry["INFERGATE_CHECK_REPLICA_ADDRESS"]["value"] == "true"
    assert float(registry["INFERGATE_MAX_REPLICA_TTL_S"]["value"]) == 60
    assert float(registry["INFERGATE_MODEL_EXPIRY_S"]["value"]) == 600
    assert "INFERGATE_ADMIN_TOKEN" not in deployment_env(chart, manifests, "router")


def test_credentials_are_generated_once_and_kept_by_lookup(chart: Chart) -> None:
    """Without a cluster `lookup` finds nothing, so each rendering draws new
    values; with one, the Secret in the cluster is read back (helm upgrade)."""
    first = secret_data(
        chart.render({**MODEL, "router": {"auth": {"adminKeys": True}}}), chart.name("internal")
    )
    second = secret_data(
        chart.render({**MODEL, "router": {"auth": {"adminKeys": True}}}), chart.name("internal")
    )
    assert all(first[k] != second[k] for k in first)


class _ApiServerStandIn(http.server.BaseHTTPRequestHandler):
    """A stand-in for the Kubernetes API server (none can run here): the
    discovery documents helm asks for, and the release's Secrets it holds."""

    secrets: ClassVar[dict[str, dict[str, str]]] = {}
    groups: ClassVar[dict[str, list[tuple[str, str]]]] = {
        "apps/v1": [("deployments", "Deployment"), ("statefulsets", "StatefulSet")],
        "networking.k8s.io/v1": [("ingresses", "Ingress"), ("networkpolicies", "NetworkPolicy")],
        "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
        "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
    }
    core: ClassVar[list[tuple[str, str]]] = [
        ("secrets", "Secret"), ("configmaps", "ConfigMap"), ("services", "Service"),
        ("serviceaccounts", "ServiceAccount"), ("pods", "Pod"),
        ("persistentvolumeclaims", "PersistentVolumeClaim"),
    ]  # fmt: skip

    def _send(self, status: int, body: dict[str, object]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    @staticmethod
    def _resources(group_version: str, kinds: list[tuple[str, str]]) -> dict[str, object]:
        resources = [
            {"name": n, "singularName": "", "namespaced": True, "kind": k, "verbs": ["get", "list"]}
            for n, k in kinds
        ]
        return {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        prefix = "/api/v1/namespaces/default/secrets/"
        if path == "/version":
            self._send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
        elif path == "/api":
            self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        elif path == "/api/v1":
            self._send(200, self._resources("v1", self.core))
        elif path == "/apis":
            groups = [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
                for gv in self.groups
            ]  # fmt: skip
            self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        elif path.startswith("/apis/") and path[6:] in self.groups:
            self._send(200, self._resources(path[6:], self.groups[path[6:]]))
        elif path.startswith(prefix) and path[len(prefix) :] in self.secrets:
            name = path[len(prefix) :]
            metadata = {
                "name": name,
                "namespace": "default",
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": RELEASE,
                    "meta.helm.sh/release-namespace": "default",
                },
            }
            data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[name].items()}
            self._send(
                200,
                {"kind": "Secret", "apiVersion": "v1", "metadata": metadata, "type": "Opaque", "data": data},
            )
        elif path == "/api/v1/namespaces/default/secrets":
            self._send(200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []})
        else:
            self._send(
                404,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                },
            )

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, dict[str, dict[str, str]]]]:
    """A kubeconfig for the stand-in API server, and the Secrets it holds."""
    held: dict[str, dict[str, str]] = {}
    handler = type("Handler", (_ApiServerStandIn,), {"secrets": held})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
                "current-context": "c",
            }
        )
    )
    yield kubeconfig, held
    server.shutdown()
    server.server_close()


def render_against(chart: Chart, kubeconfig: Path) -> dict[str, str]:
    """`helm template --dry-run=server`: the rendering an upgrade makes, lookup included."""
    values = ["--set", "router.auth.adminKeys=true", "--set", "models.m.modelId=org/m"]
    result = subprocess.run(
        [
            chart.helm,
            "template",
            RELEASE,
            str(CHART_DIR),
            "--dry-run=server",
            "--disable-openapi-validation",
            *values,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent)},
    )
    assert result.returncode == 0, result.stderr
    manifests = Manifests([doc for doc in yaml.safe_load_all(result.stdout) if doc])
    return secret_data(manifests, chart.name("internal"))


def test_credentials_are_generated_once_and_kept_across_upgrades(chart: Chart, cluster) -> None:  # type: ignore[no-untyped-def]
    kubeconfig, held = cluster
    # First install: nothing in the cluster, fresh values each time.
    first = render_against(chart, kubeconfig)
    assert set(first) == {"internal-token", "admin-token", "redis-password"}
    assert render_against(chart, kubeconfig) != first
    # Upgrade: the Secret installed is read back with `lookup`, unchanged.
    held[chart.name("internal")] = first
    assert render_against(chart, kubeconfig) == first
    assert render_against(chart, kubeconfig) == first


def test_redis_requires_the_password_in_protected_mode(chart: Chart) -> None:
    manifests = chart.render({**MODEL, "router": {"auth": {"adminKeys": True}}})
    redis = container(manifests.one("StatefulSet", chart.name("redis")))
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert command[command.index("--protected-mode") + 1] == "yes"
    env = env_of(redis)
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": chart.name("internal"),
            "key": "redis-password",
        }
    assert redis["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]


def test_network_policies_are_on_by_default(chart: Chart) -> None:
    manifests = chart.render({**MODEL, "router": {"auth": {"adminKeys": True}}})
    names = manifests.names("NetworkPolicy")
    assert {chart.name("registry"), chart.name("redis"), chart.name("worker")} <= names
    worker_policy = manifests.one("NetworkPolicy", chart.name("worker"))
    sources = worker_policy["spec"]["ingress"][0]["from"]
    # The router, and the Batch API's workers that send batch lines.
    components = [s["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for s in sources]
    assert components == ["router", "batch"]
    assert (
        json.dumps(manifests.one("NetworkPolicy", chart.name("registry"))["spec"]).count("podSelector") >= 2
    )
