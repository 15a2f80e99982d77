"""The platform under test as real processes, started by the benchmark
itself: it reuses the integration tests' harness (tests/harness) for
redis-server, the registry, the router under gunicorn+gevent and workers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests
from harness.ports import free_port
from harness.processes import Process, ProcessFailed
from harness.stack import Stack, Worker

from . import procstat
from .loopback import require_loopback

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["BenchStack", "Process", "ProcessFailed", "Worker", "free_port"]


class BenchStack:
    """redis-server + registry + router (``router_workers`` gevent processes).

    The router is optional: when it does not start, :attr:`router_error`
    says why and the scenarios still run their baselines."""

    def __init__(
        self,
        workdir: Path,
        router_workers: int = 1,
        router_env: Mapping[str, str] | None = None,
        log_level: str = "WARNING",
    ) -> None:
        env = {"INFERGATE_LOG_LEVEL": log_level, **(router_env or {})}
        # The baselines call workers straight, without the internal credential
        # (a constant-time comparison per request when it is on).
        self.stack = Stack(workdir, router_env=env, router_workers=router_workers, internal_credential=False)
        self.router_error = ""

    # -------------------------------------------------------------- start

    def start(self, with_router: bool = True) -> BenchStack:
        try:
            self.stack.redis.start()
            self.stack.start_registry()
        except BaseException:
            self.stop()
            raise
        if with_router:
            try:
                self.stack.start_router()
            except (ProcessFailed, OSError) as exc:
                self.router_error = str(exc).splitlines()[0][:300] or type(exc).__name__
                if self.stack.router is not None:
                    self.stack.router.stop()
                    self.stack.router = None
        return self

    @property
    def has_router(self) -> bool:
        return self.stack.router is not None and self.stack.router.alive()

    @property
    def router_url(self) -> str:
        return require_loopback(self.stack.router_url)

    @property
    def redis_url(self) -> str:
        return self.stack.redis.url

    @property
    def logs(self) -> Path:
        return self.stack.logs

    def router_pids(self) -> list[int]:
        """The router's gunicorn worker processes (not the master)."""
        if self.stack.router is None:
            return []
        return procstat.children(self.stack.router.pid)

    def null_worker(self, name: str, *args: str) -> Worker:
        return self.stack.null_worker(name, *args)

    def start_worker(
        self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout_s: float = 300
    ) -> Worker:
        return self.stack.start_worker(name, cmd, env=env, timeout_s=timeout_s)

    def stop_worker(self, worker: Worker) -> None:
        self.stack.stop_worker(worker)

    def wait_routable(self, model: str, timeout_s: float = 30) -> None:
        """Wait until the router lists ``model`` (its registry cache caught up)."""
        deadline = time.monotonic() + timeout_s
        url = f"{self.router_url}/openai/v1/models"
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException, ValueError):
                response = requests.get(url, timeout=2)
                if response.ok and any(m.get("id") == model for m in response.json().get("data", [])):
                    return
            time.sleep(0.2)
        raise ProcessFailed(f"the router does not list {model!r} after {timeout_s}s")

    # --------------------------------------------------------------- stop

    def stop(self) -> None:
        self.stack.stop()

    def __enter__(self) -> BenchStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
