"""Shared fixtures of worker-hf's tests: the small test models (built once
per session), a real redis-server on a free port, and real worker-hf
processes on free ports, started once per session and stopped at its end.

* ``models``: folder holding every test model the builder makes.
* ``redis_server``: a private :class:`harness.redis_server.RedisServer`.
* ``hf_worker(model_dir, *flags)``: a ready worker-hf process serving
  ``model_dir`` (the same model and flags share one process per session).
* ``run_worker_hf(*args)``: run worker-hf to completion (start-up errors).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from harness.ports import free_port  # noqa: E402
from harness.processes import Process  # noqa: E402
from harness.redis_server import RedisServer  # noqa: E402
from hf_worker_process import HFWorker, worker_command  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "INFERGATE_TORCH_THREADS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("worker-hf-models")
    subprocess.run(
        [sys.executable, "-m", "infergate_worker_hf.testmodels", "--out", str(out)],
        check=True,
        env={**os.environ, **WORKER_ENV},
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    return out


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hf_worker(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Callable[..., HFWorker]]:
    logs = tmp_path_factory.mktemp("worker-hf-logs")
    running: dict[tuple[str, ...], HFWorker] = {}

    def start(model_dir: Path | str, *flags: str, timeout_s: float = 120) -> HFWorker:
        key = (str(model_dir), *flags)
        if key in running and running[key].process.alive():
            return running[key]
        port = free_port()
        process = Process(
            f"worker-hf-{Path(model_dir).name}",
            worker_command(model_dir, port, redis_server.url, *flags),
            logs / f"{Path(model_dir).name}-{port}.log",
            env=WORKER_ENV,
        )
        worker = HFWorker(f"http://127.0.0.1:{port}", process, Path(model_dir))
        try:
            process.wait_http_ok(worker.url + "/readyz", timeout_s=timeout_s)
        except Exception:
            process.stop()
            raise
        running[key] = worker
        return worker

    yield start
    for worker in running.values():
        worker.process.stop()


@pytest.fixture
def run_worker_hf(redis_server: RedisServer) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run worker-hf in the foreground; for start-up errors it exits at once."""

    def run(model_dir: Path | str, *flags: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            worker_command(model_dir, free_port(), redis_server.url, *flags),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, **WORKER_ENV},
        )

    return run
