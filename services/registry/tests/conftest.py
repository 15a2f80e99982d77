"""Fixtures: a private redis-server on a free port, the registry app over it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from harness.ports import free_port  # tests/harness, on the path by services/conftest.py

from infergate_registry.app import create_app
from infergate_registry.settings import RegistrySettings


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (ci/setup.sh installs it)")
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = free_port()
    pidfile = workdir / "redis.pid"
    subprocess.run(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(workdir)],
        check=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url
    client.close()
    pid = int(pidfile.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of its own per test, so tests share one server safely."""
    return f"t{abs(hash(request.node.nodeid)) % 10**9}"


@pytest.fixture
def settings(redis_url: str, prefix: str) -> RegistrySettings:
    # These tests register made-up replica URLs from the test client; the
    # address check has its own tests (test_admin_access.py).
    return RegistrySettings(
        redis_url=redis_url, stream_prefix=prefix, reap_interval_s=0, check_replica_address=False
    )


@pytest.fixture
def app(settings: RegistrySettings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)
