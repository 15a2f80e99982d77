"""The chart agrees with the code: render charts/infergate, take each
Deployment's container command, args and environment exactly as Kubernetes
would hand them to the process, and run them here as local processes.

What Kubernetes does is done here by hand, and nothing more:
* env ``value``/``valueFrom`` (Secrets and ConfigMaps of the same rendering,
  ``status.podIP``) and ``envFrom``, with ``$(VAR)`` expansion in args;
* cluster DNS: ``<scheme>://<service>:<port>`` becomes the loopback port of
  the process behind that Service; the pod's own container port becomes a
  free port; the pod IP is 127.0.0.2, so that an advertised URL that fell
  back to the worker's default (127.0.0.1) shows;
* emptyDir mounts named in the env become temporary folders.
Redis is a local redis-server instead of the StatefulSet. Everything else
comes from the chart; the children get no INFERGATE_* variable from this
process. A renamed flag or environment variable breaks a check below.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from chart_fixtures import ROOT, Chart, Manifest, Manifests, container, flag_value, helm_binary
from harness.ports import free_port
from harness.redis_server import RedisServer
from harness.stack import CHILD_ENV

pytestmark = pytest.mark.slow

POD_IP = "127.0.0.2"
API_KEY = "chart-check-key"
MODEL = "tiny"
DOMAIN = "example.com"
MODEL_HOST = f"{MODEL}.{DOMAIN}"
EXTRA_HOST = "chat.chart.test"
STREAM_PREFIX = "chartcheck"
# The small Llama (with a chat template) of worker-hf's test model builder.
TINY_LLM = "tiny-llama"
VENV_BIN = Path(sys.executable).parent

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, unknown
    ones stay as written, ``$$`` is a literal ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(one, text)


class CleanProcess:
    """A process whose environment is exactly ``env``, nothing inherited from
    the test process, so that only what the chart sets reaches it. Its own
    process group is signalled on stop (gunicorn's workers included)."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def wait_http_ok(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).ok:
                    return
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not answering {url} after {timeout_s}s:\n{self.log_tail()}")

    def stop(self) -> None:
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        # Children that ignored SIGTERM or outlived the group's leader.
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


@dataclass
class LocalPod:
    """One Deployment's container, to be run as a local process."""

    name: str
    workload: Manifest
    container_port: int
    port: int = field(default_factory=free_port)
    # Every other container port (metrics) -> its own loopback port.
    other_ports: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for entry in self.spec["ports"]:
            if int(entry["containerPort"]) != self.container_port:
                self.other_ports[int(entry["containerPort"])] = free_port()

    def local_port(self, container_port: int) -> int:
        return self.port if container_port == self.container_port else self.other_ports[container_port]

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.workload["spec"]["template"]["metadata"]["labels"])

    @property
    def spec(self) -> Manifest:
        return container(self.workload)


class ClusterOnLoopback:
    """Kubernetes' part, done by hand for one rendering (see the module docstring)."""

    def __init__(self, manifests: Manifests, redis_port: int, workdir: Path) -> None:
        self.manifests = manifests
        self.workdir = workdir
        self.pods = {
            doc["metadata"]["name"]: LocalPod(
                doc["metadata"]["name"], doc, int(container(doc)["ports"][0]["containerPort"])
            )
            for doc in manifests.of_kind("Deployment")
            # Pods without a port (the batch workers) serve nothing to route to.
            if container(doc).get("ports")
        }
        self.redis_port = redis_port
        # (service name, service port) -> loopback port
        self.addresses: dict[tuple[str, int], int] = {}
        for service in manifests.of_kind("Service"):
            self._map_service(service)

    def _map_service(self, service: Manifest) -> None:
        selector = service["spec"]["selector"]
        name = service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            if port["targetPort"] == "redis":
                self.addresses[(name, int(port["port"]))] = self.redis_port
                continue
            pods = [p for p in self.pods.values() if selector.items() <= p.pod_labels.items()]
            assert len(pods) == 1, f"Service {name} selects {len(pods)} Deployments"
            named = {p["name"]: p["containerPort"] for p in pods[0].spec["ports"]}
            self.addresses[(name, int(port["port"]))] = pods[0].local_port(int(named[port["targetPort"]]))

    def _rewrite(self, text: str, pod: LocalPod) -> str:
        for (service, service_port), local in self.addresses.items():
            text = re.sub(
                rf"\b([a-z]+)://([^/@\s]*@)?{re.escape(service)}:{service_port}\b",
                rf"\g<1>://\g<2>127.0.0.1:{local}",
                text,
            )
        for own in (pod.container_port, *pod.other_ports):
            local = pod.local_port(own)
            text = re.sub(rf"^(0\.0\.0\.0|{re.escape(POD_IP)}):{own}$", rf"\g<1>:{local}", text)
            text = re.sub(rf"://{re.escape(POD_IP)}:{own}\b", f"://{POD_IP}:{local}", text)
        return text

    def _lookup(self, kind: str, name: str, key: str) -> str:
        doc = self.manifests.one(kind, name)
        if kind == "Secret":
            return base64.b64decode(doc["data"][key]).decode()
        return str(doc["data"][key])

    def _env_value(self, entry: Manifest, env: Mapping[str, str]) -> str:
        if "value" in entry:
            return expand(str(entry["value"]), env)
        source = entry["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            assert path == "status.podIP", f"no local stand-in for {path}"
            return POD_IP
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self._lookup("Secret", ref["name"], ref["key"])
        ref = source["configMapKeyRef"]
        return self._lookup("ConfigMap", ref["name"], ref["key"])

    def environment(self, pod: LocalPod) -> dict[str, str]:
        """The container's environment: envFrom, then env (which wins), then
        emptyDir paths moved under the work folder."""
        env: dict[str, str] = {}
        for source in pod.spec.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.manifests.one("ConfigMap", source["configMapRef"]["name"])["data"])
            else:
                secret = self.manifests.one("Secret", source["secretRef"]["name"])
                env.update({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
        for entry in pod.spec.get("env", []):
            env[entry["name"]] = self._env_value(entry, env)
        volumes = {v["name"]: v for v in pod.workload["spec"]["template"]["spec"].get("volumes", [])}
        for mount in pod.spec.get("volumeMounts", []):
            if "emptyDir" not in volumes[mount["name"]]:
                continue
            local = self.workdir / pod.name / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            for key, value in env.items():
                if value == mount["mountPath"] or value.startswith(mount["mountPath"] + "/"):
                    env[key] = str(local) + value[len(mount["mountPath"]) :]
        return {key: self._rewrite(value, pod) for key, value in env.items()}

    def argv(self, pod: LocalPod, env: Mapping[str, str]) -> list[str]:
        words = [expand(word, env) for word in [*pod.spec["command"], *pod.spec.get("args", [])]]
        words = [self._rewrite(word, pod) for word in words]
        for index, word in enumerate(words[:-1]):
            if word == "--port" and words[index + 1] == str(pod.container_port):
                words[index + 1] = str(pod.port)
        return words

    def start(self, pod: LocalPod, image_bin: Path = VENV_BIN) -> CleanProcess:
        """Run the pod's container; ``image_bin`` stands for its image (the
        virtual environment whose python and gunicorn it runs)."""
        env = self.environment(pod)
        home = self.workdir / pod.name / "home"
        home.mkdir(parents=True, exist_ok=True)
        image_env = {**CHILD_ENV, "PATH": f"{image_bin}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        argv = self.argv(pod, env)
        argv[0] = str(image_bin / argv[0]) if (image_bin / argv[0]).exists() else argv[0]
        log = self.workdir / f"{pod.name}.log"
        return CleanProcess(pod.name, argv, log, env={**image_env, **env})


@dataclass
class LocalRelease:
    cluster: ClusterOnLoopback
    processes: dict[str, CleanProcess]
    redis: RedisServer
    router_url: str
    registry_url: str
    worker: LocalPod
    values: dict[str, Any]

    def pod(self, suffix: str) -> LocalPod:
        return next(p for name, p in self.cluster.pods.items() if name.endswith(suffix))

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.log_tail(3000)}" for name, p in self.processes.items())


def wait_for(check: Any, timeout_s: float, what: str, release_logs: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not {what} after {timeout_s}s\n{release_logs()}")


def chart_values(
    model_dir: Path, runtime: str = "huggingface", args: list[str] | None = None
) -> dict[str, Any]:
    return {
        "domains": [DOMAIN],
        "streamPrefix": STREAM_PREFIX,
        # One process each (the defaults are two): the process counts show INFERGATE_WORKERS works.
        "router": {"workers": 1, "apiKeys": [API_KEY], "config": {"heartbeatDeadlineS": 10}},
        # The local stand-in for the pod IP (127.0.0.2) is not the address the worker's
        # connections come from, as it would be in a cluster.
        "registry": {"workers": 1, "checkReplicaAddress": False},
        "models": {
            MODEL: {
                "runtime": runtime,
                "modelId": str(model_dir),
                "args": args if args is not None else ["--torch_threads=1"],
                "hosts": [EXTRA_HOST],
                # Reachable only on its own host names: shows --domains, --hosts and --restricted arrived.
                "restricted": True,
            }
        },
    }


@contextlib.contextmanager
def local_release(
    workdir: Path, values: dict[str, Any], worker_bin: Path = VENV_BIN, worker_timeout_s: float = 180
) -> Iterator[LocalRelease]:
    """The chart rendered with ``values``, its Deployments running here."""
    chart = Chart(helm_binary())
    manifests = chart.render(values)
    (workdir / "redis").mkdir()
    # The bundled Redis's password, as the chart generated it.
    internal = manifests.one("Secret", chart.name("internal"))
    password = base64.b64decode(internal["data"]["redis-password"]).decode()
    redis = RedisServer(workdir / "redis", password=password).start()
    cluster = ClusterOnLoopback(manifests, redis.port, workdir)
    processes: dict[str, CleanProcess] = {}
    try:
        registry = cluster.pods[chart.name("registry")]
        router = cluster.pods[chart.name("router")]
        worker = cluster.pods[chart.name(f"worker-{MODEL}")]
        assert set(cluster.pods) == {registry.name, router.name, worker.name}
        release = LocalRelease(
            cluster,
            processes,
            redis,
            f"http://127.0.0.1:{router.port}",
            f"http://127.0.0.1:{registry.port}",
            worker,
            values,
        )
        processes[registry.name] = cluster.start(registry)
        processes[router.name] = cluster.start(router)
        processes[worker.name] = cluster.start(worker, worker_bin)
        # The readiness probes the chart gives each Deployment, on the local ports.
        for pod in (registry, router, worker):
            probe = pod.spec["readinessProbe"]["httpGet"]["path"]
            timeout_s = worker_timeout_s if pod is worker else 60
            processes[pod.name].wait_http_ok(f"http://127.0.0.1:{pod.port}{probe}", timeout_s)
        wait_for(
            lambda: MODEL in model_ids(openai(release, "GET", "/models")),
            timeout_s=60,
            what="listed by the router",
            release_logs=release.logs,
        )
        yield release
    finally:
        for process in processes.values():
            process.stop()
        redis.stop()


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory, test_models: Path) -> Iterator[LocalRelease]:
    """worker-hf, router and registry as the chart runs them, once the router
    lists the model on its own host name."""
    with local_release(
        tmp_path_factory.mktemp("chart-release"), chart_values(test_models / TINY_LLM)
    ) as release:
        yield release


def openai(
    release: LocalRelease, method: str, path: str, host: str | None = MODEL_HOST, **kwargs: Any
) -> Any:
    headers = {"Authorization": f"Bearer {API_KEY}", **kwargs.pop("headers", {})}
    if host is not None:
        headers["Host"] = host
    return requests.request(
        method, f"{release.router_url}/openai/v1{path}", headers=headers, timeout=60, **kwargs
    )


def model_ids(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [entry["id"] for entry in response.json()["data"]]


def test_worker_registers_the_address_the_chart_advertises(listed: LocalRelease) -> None:
    record = requests.get(f"{listed.registry_url}/registry/models/{MODEL}", timeout=5).json()
    assert [replica["url"] for replica in record["replicas"]] == [f"http://{POD_IP}:{listed.worker.port}"]
    assert record["replicas"][0]["ready"] is True
    assert sorted(record["domains"]) == [DOMAIN]
    assert record["hosts"] == [EXTRA_HOST]
    assert record["restricted"] is True
    assert record["backend"] == "huggingface"


def test_router_lists_the_model_on_its_hosts_only(listed: LocalRelease) -> None:
    assert model_ids(openai(listed, "GET", "/models", host=MODEL_HOST)) == [MODEL]
    assert model_ids(openai(listed, "GET", "/models", host=EXTRA_HOST)) == [MODEL]
    # Restricted: not on the router's own address.
    assert MODEL not in model_ids(openai(listed, "GET", "/models", host=None))


def test_router_requires_the_api_key_from_the_chart_secret(listed: LocalRelease) -> None:
    response = requests.get(f"{listed.router_url}/openai/v1/models", headers={"Host": MODEL_HOST}, timeout=10)
    assert response.status_code == 401
    wrong = openai(listed, "GET", "/models", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401


def test_completion_answers_through_the_chart_processes(listed: LocalRelease) -> None:
    body = {"model": MODEL, "prompt": "hello world", "max_tokens": 4, "temperature": 0}
    response = openai(listed, "POST", "/completions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer["choices"][0]["text"], str)
    assert 1 <= answer["usage"]["completion_tokens"] <= 4


def test_streamed_completion_travels_through_redis_under_the_chart_prefix(listed: LocalRelease) -> None:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 4, "stream": True}
    with openai(listed, "POST", "/completions", json=body, stream=True) as response:
        assert response.status_code == 200, response.text
        events = [
            line[len("data: ") :]
            for line in response.iter_lines(decode_unicode=True)
            if line.startswith("data: ")
        ]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks and all(chunk["object"] == "text_completion" for chunk in chunks)
    keys = listed.redis.client().keys("*")
    assert any(key.startswith(f"{STREAM_PREFIX}:stream:") for key in keys), keys
    assert not [key for key in keys if key.startswith("infergate:")], keys


def gunicorn_workers(process: CleanProcess) -> int:
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return len(children)


def test_gunicorn_runs_the_worker_count_the_chart_sets(listed: LocalRelease) -> None:
    for suffix in ("-router", "-registry"):
        pod = listed.pod(suffix)
        expected = int(next(e["value"] for e in pod.spec["env"] if e["name"] == "INFERGATE_WORKERS"))
        assert gunicorn_workers(listed.processes[pod.name]) == expected == 1


def test_worker_command_is_worker_hf_with_kserve_flags(listed: LocalRelease) -> None:
    spec = listed.worker.spec
    assert spec["command"] == ["python", "-m", "infergate_worker_hf"]
    assert flag_value(spec["args"], "--model_name") == MODEL


def test_helm_test_pod_script_passes_against_the_release(listed: LocalRelease) -> None:
    chart = Chart(helm_binary())
    pod = chart.render(chart_values(Path("/unused"))).one("Pod", chart.name("router-test"))
    spec = pod["spec"]["containers"][0]
    env = {
        "PATH": "/usr/bin:/bin",
        "ROUTER": listed.router_url,
        "API_KEYS": API_KEY,
    }
    assert spec["command"][:2] == ["sh", "-ec"]
    result = subprocess.run(
        [*spec["command"], *spec["args"]], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"status": "alive"' in result.stdout or '"status":"alive"' in result.stdout


VLLM_BIN = ROOT / ".venv-vllm" / "bin"
# vLLM's CPU engine: a small context and an explicit KV cache (no memory profiling).
VLLM_CPU_ARGS = ["--max_model_len=512", f"--kv-cache-memory-bytes={256 * 1024 * 1024}"]


@pytest.mark.vllm
def test_auto_runtime_runs_the_vllm_launcher_as_the_chart_renders_it(
    tmp_path: Path, test_models: Path
) -> None:
    """The `auto` runtime's command under the worker-vllm environment (the
    vLLM image): the launcher takes the chart's flags and serves on vLLM."""
    if not (VLLM_BIN / "python").exists():
        pytest.fail(f"{VLLM_BIN}/python is missing: run ci/setup_vllm.sh")
    values = chart_values(test_models / TINY_LLM, runtime="auto", args=VLLM_CPU_ARGS)
    with local_release(tmp_path, values, worker_bin=VLLM_BIN, worker_timeout_s=300) as release:
        spec = release.worker.spec
        assert spec["command"] == ["python", "-m", "infergate_worker_vllm"]
        assert flag_value(spec["args"], "--backend") == "auto"
        record = requests.get(f"{release.registry_url}/registry/models/{MODEL}", timeout=5).json()
        assert record["backend"] == "vllm", record
        assert [r["url"] for r in record["replicas"]] == [f"http://{POD_IP}:{release.worker.port}"]
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 4, "temperature": 0}
        response = openai(release, "POST", "/completions", json=body)
        assert response.status_code == 200, response.text
        assert 1 <= response.json()["usage"]["completion_tokens"] <= 4


def notes_commands(notes: str) -> list[str]:
    """The curl commands of NOTES.txt, continuation lines joined."""
    commands, current = [], ""
    for line in notes.splitlines():
        stripped = line.strip()
        if current or stripped.startswith("curl "):
            current += stripped.removesuffix("\\") + " "
            if not stripped.endswith("\\"):
                commands.append(current.strip())
                current = ""
    return commands


def test_notes_curl_commands_answer(listed: LocalRelease) -> None:
    """The curl commands the install prints, run as printed, with the model's
    host name resolved to the local router (as DNS would point it at the ingress)."""
    chart = Chart(helm_binary())
    values = copy.deepcopy(listed.values)
    values["router"]["ingress"] = {"host": MODEL_HOST}
    notes = chart.notes(values)
    assert "export INFERGATE_API_KEY=" in notes
    assert f'base_url="http://{MODEL_HOST}/openai/v1"' in notes
    commands = notes_commands(notes)
    assert len(commands) >= 3, notes
    port = listed.router_url.rsplit(":", 1)[1]
    env = {"PATH": "/usr/bin:/bin", "INFERGATE_API_KEY": API_KEY}
    for command in commands:
        local = command.replace("curl ", f"curl -fsS --connect-to {MODEL_HOST}:80:127.0.0.1:{port} ", 1)
        result = subprocess.run(["sh", "-c", local], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
        assert isinstance(json.loads(result.stdout), dict)


def test_metrics_ports_the_chart_declares_serve_prometheus(listed: LocalRelease) -> None:
    """The router's and the worker's `metrics` container ports (what the
    ServiceMonitors scrape) serve metrics; the API port does not."""
    assert openai(listed, "GET", "/models").status_code == 200
    router = listed.cluster.pods[Chart(helm_binary()).name("router")]
    named = {p["name"]: int(p["containerPort"]) for p in router.spec["ports"]}
    text = requests.get(f"http://127.0.0.1:{router.local_port(named['metrics'])}/metrics", timeout=10).text
    assert 'infergate_router_requests_total{method="GET",route="/openai/v1/models",status="200"}' in text
    # Not on the API port (401 here: the release requires an API key, and no route would answer).
    assert requests.get(f"{listed.router_url}/metrics", timeout=10).status_code in (401, 404)
    worker = listed.worker
    named = {p["name"]: int(p["containerPort"]) for p in worker.spec["ports"]}
    text = requests.get(f"http://127.0.0.1:{worker.local_port(named['metrics'])}/metrics", timeout=10).text
    assert f'infergate_worker_requests_waiting{{model="{MODEL}"}}' in text
    assert f'infergate_worker_gpu_unusable{{model="{MODEL}"}} 0.0' in text
