"""Redis stopped: streaming answers 503 in each protocol's shape; Redis back:
the same router serves again, without a restart."""

from __future__ import annotations

import time

import requests
from harness.sse import events
from harness.stack import Stack


def _stream_chat(stack: Stack) -> requests.Response:
    return requests.post(
        f"{stack.openai_url}/chat/completions",
        json={
            "model": "null-redis",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 4,
            "stream": True,
        },
        stream=True,
        timeout=30,
    )


def _stream_v1(stack: Stack) -> requests.Response:
    return requests.post(
        f"{stack.router_url}/v1/models/null-redis:predict",
        json={"instances": ["x"], "parameters": {"max_tokens": 4, "stream": True}},
        stream=True,
        timeout=30,
    )


def test_redis_down_gives_503_and_the_router_recovers(fresh_stack: Stack) -> None:
    stack = fresh_stack
    worker = stack.null_worker("null-redis", "--tokens", "4")
    with _stream_chat(stack) as response:
        assert response.status_code == 200
        assert list(events(response))[-1].done
    router_pid = stack.router.pid if stack.router else None

    stack.redis.stop()
    deadline = time.monotonic() + 10
    while (chat := _stream_chat(stack)).status_code != 503:
        assert time.monotonic() < deadline, f"still {chat.status_code} with Redis down: {chat.text}"
        time.sleep(0.1)
    error = chat.json()["error"]
    assert error["type"] and error["message"]
    v1 = _stream_v1(stack)
    assert v1.status_code == 503, v1.text
    assert isinstance(v1.json()["error"], str)

    stack.redis.start()
    deadline = time.monotonic() + 20
    while True:
        response = _stream_chat(stack)
        if response.status_code == 200:
            received = list(events(response))
            if received and received[-1].done:
                break
        assert time.monotonic() < deadline, f"router did not recover: {response.status_code} {response.text}"
        time.sleep(0.5)
    text = "".join(
        e.json()["choices"][0]["delta"].get("content") or "" for e in received[:-1] if e.json()["choices"]
    )
    assert text == "tok0 tok1 tok2 tok3 "
    assert stack.router is not None and stack.router.pid == router_pid and stack.router.alive()
    assert worker.process.alive()
