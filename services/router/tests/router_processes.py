"""Real processes for the router's tests: redis-server, the registry under
gunicorn, null-engine workers, the router under gunicorn+gevent.

Each runs in its own process group with its output in a log file, and is
stopped (SIGTERM, then SIGKILL) by the fixture that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import redis
import requests
from harness.ports import free_port  # tests/harness, on the path by services/conftest.py


class Process:
    def __init__(self, name: str, cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None):
        self.name = name
        self.log_path = log_path
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(cmd), stdout=self._log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_until(self, check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before {what}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException, redis.RedisError):
                if check():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not {what} after {timeout_s}s:\n{self.log_tail()}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()


class RedisServer:
    """A private redis-server that can be stopped and started again on the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Process | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (ci/setup.sh installs it)")
        cmd = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir)]  # fmt: skip
        self.process = Process("redis", cmd, self.workdir / "redis.log")
        client = redis.Redis.from_url(self.url)
        self.process.wait_until(lambda: bool(client.ping()), "answering PING", 10)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


class Stack:
    """Registry and workers over one Redis, all under one key prefix."""

    def __init__(self, workdir: Path, redis_url: str, prefix: str) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.prefix = prefix
        self.processes: list[Process] = []
        self.registry_url = ""

    def env(self, **extra: str) -> dict[str, str]:
        return {"INFERGATE_REDIS_URL": self.redis_url, "INFERGATE_STREAM_PREFIX": self.prefix, **extra}

    def _start(self, name: str, cmd: Sequence[str], env: Mapping[str, str]) -> Process:
        process = Process(name, cmd, self.workdir / f"{name}.log", env)
        self.processes.append(process)
        return process

    def start_registry(self) -> str:
        port = free_port()
        cmd = [sys.executable, "-m", "gunicorn", "--config", "python:infergate_registry.gunicorn_conf",
               "infergate_registry.wsgi:app"]  # fmt: skip
        env = self.env(INFERGATE_BIND=f"127.0.0.1:{port}", INFERGATE_WORKERS="1", INFERGATE_THREADS="16")
        process = self._start("registry", cmd, env)
        self.registry_url = f"http://127.0.0.1:{port}"
        process.wait_until(lambda: requests.get(f"{self.registry_url}/readyz", timeout=2).ok, "ready")
        return self.registry_url

    def start_null_worker(
        self, name: str, *, tokens: int = 8, interval_ms: float = 0, task: str = "text_generation",
        env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
    ) -> tuple[Process, str]:  # fmt: skip
        port = free_port()
        cmd = [sys.executable, "-m", "infergate_common.null_engine", "--model_name", name, "--task", task,
               "--port", str(port), "--host", "127.0.0.1", "--tokens", str(tokens),
               "--token_interval_ms", str(interval_ms), "--redis_url", self.redis_url,
               "--registry_url", self.registry_url, *extra_args]  # fmt: skip
        process = self._start(f"worker-{name}-{port}", cmd, self.env(**(env or {})))
        url = f"http://127.0.0.1:{port}"
        process.wait_until(lambda: self.replica_ready(name, url), f"registered as {name}")
        return process, url

    def replica_ready(self, name: str, url: str) -> bool:
        response = requests.get(f"{self.registry_url}/registry/models/{name}", timeout=2)
        if not response.ok:
            return False
        return any(r["url"] == url and r["ready"] for r in response.json()["replicas"])

    def start_router(self, **env: str) -> tuple[Process, str]:
        port = free_port()
        cmd = [sys.executable, "-m", "gunicorn", "--config", "python:infergate_router.gunicorn_conf",
               "infergate_router.wsgi:app"]  # fmt: skip
        defaults = {"INFERGATE_WORKERS": "1", "INFERGATE_REGISTRY_URL": self.registry_url}
        full_env = self.env(**{**defaults, **env, "INFERGATE_BIND": f"127.0.0.1:{port}"})
        process = self._start(f"router-{port}", cmd, full_env)
        url = f"http://127.0.0.1:{port}"
        process.wait_until(lambda: requests.get(f"{url}/", timeout=2).ok, "answering /")
        return process, url

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
