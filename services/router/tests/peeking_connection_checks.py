"""Run under gevent (``python peeking_connection_checks.py <redis url>``), as
the router runs: what ``PeekingConnection.can_read`` answers against a real
redis-server, and how often it fell back on the ``poll`` redis-py uses.
Prints one JSON object; ``test_redis_connections.py`` asserts on it."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import select  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402

from infergate_router import redis_connections  # noqa: E402

polls = 0
_poll = select.poll


def counting_poll() -> Any:
    global polls
    polls += 1
    return _poll()


# redis-py's parsers look the function up on the module at each call.
select.poll = counting_poll  # type: ignore[assignment]


def main(url: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    client = redis_connections.client(url, socket_timeout=5)
    admin = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.ping()
        conn = client.connection_pool.get_connection()
        found["class"] = type(conn).__name__
        found["socket_is_geventish"] = type(conn._sock).__module__.startswith("gevent")
        # Nothing sent, nothing waiting: "nothing to read", without a poll.
        before = polls
        found["clean"] = conn.can_read()
        found["clean_polls"] = polls - before
        # A reply nobody read yet: the connection is dirty.
        conn.send_command("PING")
        # The reply may take a moment to arrive: ask until it has.
        found["pending"] = any(conn.can_read() or gevent.sleep(0.01) for _ in range(200))
        conn.read_response()
        found["clean_again"] = conn.can_read()
        # The server drops the connection: redis-py's own check says so.
        conn.send_command("CLIENT", "ID")
        client_id = conn.read_response()
        admin.execute_command("CLIENT", "KILL", "ID", client_id)
        try:
            found["killed"] = conn.can_read()
        except redis.ConnectionError as exc:
            found["killed"] = f"ConnectionError: {exc}"
        client.connection_pool.release(conn)
        # The pool replaces it; commands keep working.
        for i in range(50):
            client.set(f"peek-check-{i}", i)
        found["values"] = [int(client.get(f"peek-check-{i}") or -1) for i in range(50)]
        client.delete(*[f"peek-check-{i}" for i in range(50)])
    finally:
        client.close()
        admin.close()
    return found


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
