"""Redis stopped and started again under a running router (gunicorn+gevent):
open streams get an error event, new requests get 503 in the protocol's
shape, and the router recovers without a restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from router_processes import RedisServer, Stack
from sse_client import events

CHAT = {"model": "null", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Stack, str]]:
    server = RedisServer(tmp_path_factory.mktemp("redis-outage"))
    server.start()
    stack = Stack(tmp_path_factory.mktemp("outage"), server.url, f"ro{uuid.uuid4().hex[:8]}")
    try:
        stack.start_registry()
        stack.start_null_worker("null", tokens=4)
        stack.start_null_worker("endless", tokens=100_000, interval_ms=10)
        _, router = stack.start_router(INFERGATE_REGISTRY_CACHE_TTL_S="0.5")
        yield server, stack, router
    finally:
        stack.stop()
        server.stop()


def _stream_text(router: str) -> str:
    response = requests.post(f"{router}/openai/v1/chat/completions", json=CHAT, stream=True, timeout=10)
    assert response.status_code == 200, response.text
    return "".join(d["choices"][0]["delta"].get("content", "") for _, d in list(events(response))[:-1])


def test_redis_outage_and_recovery(outage_stack: tuple[RedisServer, Stack, str]) -> None:
    server, _, router = outage_stack
    assert _stream_text(router) == "tok0 tok1 tok2 tok3 "

    body = {**CHAT, "model": "endless"}
    open_stream = requests.post(f"{router}/openai/v1/chat/completions", json=body, stream=True, timeout=10)
    reader = events(open_stream)
    for _ in range(3):
        next(reader)

    server.stop()
    stopped_at = time.monotonic()
    tail = [data for _, data in reader]
    assert tail and "error" in tail[-1], tail[-3:]
    assert time.monotonic() - stopped_at < 5

    # 503 once the registry cache (TTL 0.5 s) no longer hides the outage.
    deadline = time.monotonic() + 10
    while (
        response := requests.post(f"{router}/openai/v1/chat/completions", json=CHAT, timeout=10)
    ).status_code != 503:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.05)
    assert response.status_code == 503
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = requests.post(f"{router}/v1/models/null:predict", json={"instances": ["x"]}, timeout=10)
    assert response.status_code == 503 and isinstance(response.json()["error"], str)

    server.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            if _stream_text(router) == "tok0 tok1 tok2 tok3 ":
                break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)
    plain = requests.post(f"{router}/openai/v1/chat/completions", json={**CHAT, "stream": False}, timeout=10)
    assert plain.status_code == 200
