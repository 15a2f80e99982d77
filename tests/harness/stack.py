"""The platform as real processes: redis-server, the registry and the router
under gunicorn, and workers started on demand.

    stack = Stack(workdir).start()
    worker = stack.start_worker("tiny", [sys.executable, "-m", "infergate_worker_hf",
                                         "--model_name", "tiny", "--model_id", path])
    requests.get(stack.router_url + "/openai/v1/models")
    stack.stop()
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from .core_pinning import pin_engines
from .leaks import WATCH
from .ports import free_port
from .processes import Process, stop_all
from .redis_server import RedisServer

BIN = Path(sys.executable).parent

# Every child runs offline, single-threaded where torch runs: the machine has two cores.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}


class Worker:
    """A worker process registered under ``name`` at ``url``; ``headers``
    carry the internal credential its routes require."""

    def __init__(self, name: str, url: str, process: Process, headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.url = url
        self.process = process
        self.headers = dict(headers or {})

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


class Stack:
    def __init__(
        self,
        workdir: Path,
        prefix: str = "infergate",
        router_env: Mapping[str, str] | None = None,
        router_workers: int = 2,
        internal_credential: bool = True,
    ) -> None:
        """``internal_credential=False``: services without the internal token
        (the benchmarks call workers straight, as only the router may)."""
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        redis_dir = workdir / "redis"
        redis_dir.mkdir(exist_ok=True)
        # As deployed: Redis with a password, services with the internal credential.
        self.redis = RedisServer(redis_dir, password=secrets.token_hex(16))
        self.internal_token = secrets.token_urlsafe(24) if internal_credential else ""
        self.admin_token = secrets.token_urlsafe(24)
        # Files of the Batch API, shared by the router and the batch workers.
        self.batch_storage = workdir / "batch-files"
        self.prefix = prefix
        self.router_env = dict(router_env or {})
        # Router URL -> the URL of its metrics.
        self.metrics_urls: dict[str, str] = {}
        self.router_workers = router_workers
        self.registry_port = free_port()
        self.router_port = free_port()
        self.registry_url = f"http://127.0.0.1:{self.registry_port}"
        self.router_url = f"http://127.0.0.1:{self.router_port}"
        self.openai_url = f"{self.router_url}/openai/v1"
        self.registry: Process | None = None
        self.router: Process | None = None
        # More router "pods" (gunicorn masters) over the same Redis and registry.
        self.extra_routers: list[Process] = []
        self.workers: list[Worker] = []
        WATCH.public(self.router_url)
        WATCH.internal(
            self.registry_url.split("//", 1)[1],
            self.redis.address,
            self.redis.password or "",
            self.internal_token,
            self.admin_token,
        )

    def internal_headers(self) -> dict[str, str]:
        """What another infergate service sends: the internal credential."""
        return {"Authorization": f"Bearer {self.internal_token}"} if self.internal_token else {}

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    # ---------------------------------------------------------------- start

    def _service_env(self) -> dict[str, str]:
        return {
            **CHILD_ENV,
            "INFERGATE_REDIS_URL": self.redis.url,
            "INFERGATE_STREAM_PREFIX": self.prefix,
            "INFERGATE_LOG_LEVEL": "INFO",
            "INFERGATE_BATCH_STORAGE_URL": str(self.batch_storage),
            "INFERGATE_INTERNAL_TOKEN": self.internal_token,
        }

    def start_registry(self) -> Process:
        env = {
            **self._service_env(),
            "INFERGATE_BIND": f"127.0.0.1:{self.registry_port}",
            "INFERGATE_ADMIN_TOKEN": self.admin_token,
        }
        self.registry = Process(
            "registry",
            [str(BIN / "gunicorn"), "--config", "python:infergate_registry.gunicorn_conf",
             "infergate_registry.wsgi:app"],
            self.logs / "registry.log",
            env={**env, "INFERGATE_WORKERS": "1"},
        )  # fmt: skip
        self.registry.wait_http_ok(f"{self.registry_url}/readyz")
        return self.registry

    def _router_process(self, name: str, port: int, workers: int, env: Mapping[str, str]) -> Process:
        # Each router "pod" serves its metrics on a port of its own, as deployed.
        metrics_port = free_port()
        self.metrics_urls[f"http://127.0.0.1:{port}"] = f"http://127.0.0.1:{metrics_port}/metrics"
        full_env = {
            **self._service_env(),
            "INFERGATE_BIND": f"127.0.0.1:{port}",
            "INFERGATE_METRICS_BIND": f"127.0.0.1:{metrics_port}",
            "INFERGATE_REGISTRY_URL": self.registry_url,
            "INFERGATE_WORKERS": str(workers),
            **env,
        }
        process = Process(
            name,
            [str(BIN / "gunicorn"), "--config", "python:infergate_router.gunicorn_conf",
             "infergate_router.wsgi:app"],
            self.logs / f"{name}.log",
            env=full_env,
        )  # fmt: skip
        process.wait_http_ok(f"http://127.0.0.1:{port}/")
        return process

    def start_router(self) -> Process:
        self.router = self._router_process("router", self.router_port, self.router_workers, self.router_env)
        return self.router

    def start_extra_router(self, workers: int = 1, env: Mapping[str, str] | None = None) -> str:
        """Another router "pod" (its own gunicorn master) over the same Redis
        and registry, with the stack's router settings plus ``env``; returns its URL."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        WATCH.public(url)
        process = self._router_process(f"router-{port}", port, workers, {**self.router_env, **(env or {})})
        self.extra_routers.append(process)
        return url

    def start(self) -> Stack:
        try:
            self.redis.start()
            self.start_registry()
            self.start_router()
        except BaseException:
            self.stop()
            raise
        return self

    def worker_args(self, port: int) -> list[str]:
        return [
            "--port", str(port),
            "--registry_url", self.registry_url,
            "--redis_url", self.redis.url,
        ]  # fmt: skip

    def launch_worker(self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None) -> Worker:
        """Start ``cmd`` plus ``--port/--registry_url/--redis_url``; returns at once."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = Process(
            f"worker-{name}-{port}",
            [*cmd, *self.worker_args(port)],
            self.logs / f"worker-{name}-{port}.log",
            env={**self._service_env(), **(env or {})},
        )
        worker = Worker(name, url, process, self.internal_headers())
        WATCH.internal(f"127.0.0.1:{port}")
        self.workers.append(worker)
        return worker

    def wait_worker(self, worker: Worker, timeout_s: float = 120) -> Worker:
        """Wait until the worker is ready and the registry lists it as a ready
        replica. A vLLM worker's engine processes (started by then) go to
        cores of their own (:mod:`harness.core_pinning` says why)."""
        try:
            worker.process.wait_http_ok(f"{worker.url}/readyz", timeout_s)
            pin_engines(worker.process.pid)
            worker.process.wait_until(
                lambda: self.replica_listed(worker.name, worker.url),
                timeout_s=15,
                what="listed by the registry",
            )
        except BaseException:
            self.stop_worker(worker)
            raise
        return worker

    def start_worker(
        self,
        name: str,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout_s: float = 120,
    ) -> Worker:
        return self.wait_worker(self.launch_worker(name, cmd, env), timeout_s)

    def null_worker(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Worker:
        """A benchmark-engine worker: real process, real streams, instant answers."""
        cmd = [sys.executable, "-m", "infergate_common.null_engine", "--model_name", name, *args]
        return self.start_worker(name, cmd, env=env, timeout_s=30)

    def replica_listed(self, name: str, url: str) -> bool:
        response = requests.get(f"{self.registry_url}/registry/models/{name}", timeout=2)
        if not response.ok:
            return False
        return any(r["url"] == url and r["ready"] for r in response.json()["replicas"])

    # ----------------------------------------------------------------- stop

    def stop_worker(self, worker: Worker) -> None:
        worker.stop()
        with contextlib.suppress(ValueError):
            self.workers.remove(worker)

    def stop(self) -> None:
        # Workers first, so that they deregister while the registry still runs.
        stop_all([worker.process for worker in self.workers])
        self.workers.clear()
        stop_all([p for p in (*self.extra_routers, self.router, self.registry) if p is not None])
        self.extra_routers.clear()
        self.redis.stop()

    def forget_model(self, name: str) -> None:
        """Drop a model's record, so later tests do not see a model without replicas."""
        with contextlib.suppress(requests.RequestException):
            requests.delete(
                f"{self.registry_url}/registry/models/{name}", headers=self.internal_headers(), timeout=5
            )

    def logs_tail(self, chars: int = 3000) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)
