"""Fixtures of the router's tests: a private redis-server on a free port,
the real registry under gunicorn, null-engine workers (real worker
processes that answer instantly), the router app for the Flask test client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from router_processes import RedisServer, Stack

from infergate_router.app import create_app
from infergate_router.services import EXTENSION
from infergate_router.settings import RouterSettings

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Registry plus two generative null workers ("null", "null" again as a
    second replica) and one embedding worker ("embed")."""
    stack = Stack(tmp_path_factory.mktemp("stack"), redis_server.url, f"rt{uuid.uuid4().hex[:8]}")
    try:
        stack.start_registry()
        stack.start_null_worker("null", tokens=8)
        stack.start_null_worker("embed", task="text_embedding")
        yield stack
    finally:
        stack.stop()


def router_settings(stack: Stack, **overrides: object) -> RouterSettings:
    values: dict[str, object] = {
        "redis_url": stack.redis_url,
        "registry_url": stack.registry_url,
        "stream_prefix": stack.prefix,
        "registry_cache_ttl_s": 0.5,
    }
    values.update(overrides)
    return RouterSettings.model_validate(values)


@pytest.fixture
def app(stack: Stack) -> Iterator[Flask]:
    app = create_app(router_settings(stack))
    yield app
    app.extensions[EXTENSION].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
