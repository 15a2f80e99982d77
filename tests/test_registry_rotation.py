"""Replicas entering and leaving rotation through the real registry."""

from __future__ import annotations

import time
from collections.abc import Iterator

import requests
from conftest import HEARTBEAT_DEADLINE_S, StartWorker
from harness.sse import Event, events
from harness.stack import Stack


def _complete(stack: Stack, model: str) -> requests.Response:
    return requests.post(
        f"{stack.openai_url}/completions", json={"model": model, "prompt": "x", "max_tokens": 2}, timeout=30
    )


def _replicas(stack: Stack, model: str) -> list[str]:
    record = requests.get(f"{stack.registry_url}/registry/models/{model}", timeout=10).json()
    return [r["url"] for r in record["replicas"]]


def test_killed_worker_leaves_rotation_within_its_ttl(stack: Stack, null_worker: StartWorker) -> None:
    first = null_worker("rot-a", "--tokens", "2")
    second = null_worker("rot-a", "--tokens", "2")
    assert sorted(_replicas(stack, "rot-a")) == sorted([first.url, second.url])
    first.kill()
    killed_at = time.monotonic()
    while first.url in _replicas(stack, "rot-a"):
        # The workers' lease (replica_ttl_s) is 5 s by default.
        assert time.monotonic() - killed_at < 6.0
        time.sleep(0.1)
    # The survivor serves every request afterwards.
    for _ in range(6):
        assert _complete(stack, "rot-a").status_code == 200


def test_cleanly_stopped_worker_deregisters_at_once(stack: Stack, null_worker: StartWorker) -> None:
    worker = null_worker("rot-b", "--tokens", "2")
    assert _complete(stack, "rot-b").status_code == 200
    worker.stop()
    assert _replicas(stack, "rot-b") == []
    response = _complete(stack, "rot-b")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable_error"


def test_requests_spread_over_replicas(one_process_stack: Stack) -> None:
    """Two streams at once go to different replicas (fewest in flight): when
    one replica dies, exactly one of them fails."""
    stack = one_process_stack
    doomed = stack.null_worker("rot-c", "--tokens", "100000", "--token_interval_ms", "10")
    stack.null_worker("rot-c", "--tokens", "100000", "--token_interval_ms", "10")
    body = {"model": "rot-c", "prompt": "x", "max_tokens": 4000, "stream": True}
    responses = [
        requests.post(f"{stack.openai_url}/completions", json=body, stream=True, timeout=30) for _ in range(2)
    ]
    try:
        streams = [events(response) for response in responses]
        for stream in streams:
            assert "error" not in next(stream).json()
        doomed.kill()
        failed = [_fails_soon(stream) for stream in streams]
    finally:
        for response in responses:
            response.close()
    assert sorted(failed) == [False, True]


def _fails_soon(stream: Iterator[Event], window_s: float = HEARTBEAT_DEADLINE_S + 1.5) -> bool:
    """Whether an error event arrives within the window (else the stream keeps flowing)."""
    started = time.monotonic()
    for event in stream:
        if event.done:
            return False
        if "error" in event.json():
            return True
        if time.monotonic() - started > window_s:
            return False
    return False
