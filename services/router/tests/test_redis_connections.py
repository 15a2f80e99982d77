"""The router's Redis connections (``redis_connections``): under gevent, a
pooled connection with nothing to read is found clean without gevent's
``poll``; one holding a reply, or closed by the server, is found so by
redis-py's own check, and the pool replaces it. ``rediss://`` and
``unix://`` URLs keep redis-py's own connection classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis
from router_processes import RedisServer

from infergate_router import redis_connections

HERE = Path(__file__).parent


def test_under_gevent_the_check_before_a_command_does_not_poll(redis_server: RedisServer) -> None:
    done = subprocess.run(
        [sys.executable, str(HERE / "peeking_connection_checks.py"), redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(done.stdout)
    assert found["class"] == "PeekingConnection"
    assert found["socket_is_geventish"]
    assert found["clean"] is False
    assert found["clean_polls"] == 0
    assert found["pending"] is True
    assert found["clean_again"] is False
    assert str(found["killed"]).startswith("ConnectionError")
    assert found["values"] == list(range(50))


def test_only_plain_redis_urls_get_the_peeking_connection() -> None:
    plain = redis_connections.blocking_pool("redis://127.0.0.1:1/0", max_connections=2)
    assert plain.connection_class is redis_connections.PeekingConnection
    assert redis_connections.client("redis://127.0.0.1:1/0").connection_pool.connection_class is (
        redis_connections.PeekingConnection
    )
    tls = redis_connections.blocking_pool("rediss://127.0.0.1:1/0", max_connections=2)
    assert tls.connection_class is redis.SSLConnection
    unix = redis_connections.client("unix:///tmp/redis.sock")
    assert unix.connection_pool.connection_class is redis.UnixDomainSocketConnection


def test_without_gevent_commands_take_redis_pys_own_check(redis_server: RedisServer) -> None:
    client = redis_connections.client(redis_server.url, socket_timeout=5)
    try:
        conn = client.connection_pool.get_connection()
        conn.connect()
        assert conn.can_read() is False
        conn.send_command("PING")
        assert conn.can_read(timeout=5) is True
        assert conn.read_response() in (b"PONG", "PONG", True)
        client.connection_pool.release(conn)
        assert client.ping() is True
    finally:
        client.close()
