"""Token streams through Redis, end to end, on benchmark-engine workers whose
text is known in advance (``tok0 tok1 ...``)."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import redis
import requests
from conftest import HEARTBEAT_DEADLINE_S, StartWorker
from harness.sse import Event, events
from harness.stack import Stack, Worker


def expected_text(count: int) -> str:
    return "".join(f"tok{i} " for i in range(count))


def chat_stream(stack: Stack, model: str, max_tokens: int, **extra: Any) -> requests.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": max_tokens,
        "stream": True,
        **extra,
    }
    headers = extra.pop("headers", None) or {}
    body.pop("headers", None)
    return requests.post(
        f"{stack.openai_url}/chat/completions", json=body, stream=True, timeout=30, headers=headers
    )


def chunk_text(event: Event) -> str:
    payload = event.json()
    assert "error" not in payload, payload
    return "".join(choice["delta"].get("content") or "" for choice in payload["choices"])


def test_every_token_arrives_once_and_in_order(stack: Stack, null_worker: StartWorker) -> None:
    null_worker("null-order", "--tokens", "300")
    with chat_stream(stack, "null-order", 300) as response:
        assert response.status_code == 200
        received = list(events(response))
    assert received[-1].done
    chunks = received[:-1]
    assert "".join(chunk_text(e) for e in chunks) == expected_text(300)
    ids = [e.id for e in chunks if e.id]
    assert len(ids) == len(set(ids))


def test_sdk_stream_of_many_tokens(stack: Stack, null_worker: StartWorker) -> None:
    null_worker("null-sdk", "--tokens", "500")
    client = openai.OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0)
    stream = client.completions.create(model="null-sdk", prompt="go", max_tokens=500, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == expected_text(500)


def test_concurrent_streams_do_not_mix(stack: Stack, null_worker: StartWorker) -> None:
    null_worker("null-many", "--tokens", "1000", "--token_interval_ms", "2")

    def one(count: int) -> tuple[int, str, set[str], str | None]:
        with chat_stream(stack, "null-many", count) as response:
            assert response.status_code == 200
            received = list(events(response))
        assert received[-1].done
        payloads = [event.json() for event in received[:-1]]
        reasons = [c["finish_reason"] for p in payloads for c in p["choices"] if c["finish_reason"]]
        return count, "".join(chunk_text(e) for e in received[:-1]), {p["id"] for p in payloads}, reasons[-1]

    counts = [20 + 7 * i for i in range(32)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, counts))
    ids = set()
    for count, text, chunk_ids, reason in results:
        assert text == expected_text(count)
        assert reason == "length"
        assert len(chunk_ids) == 1
        ids |= chunk_ids
    assert len(ids) == len(counts)


def test_sdk_reads_a_stream_with_heartbeats(stack: Stack, null_worker: StartWorker) -> None:
    """A generation longer than the heartbeat interval: the keep-alives the
    router sends on heartbeats must not look like events to the SDK."""
    null_worker("null-slow", "--tokens", "60", "--token_interval_ms", "40")
    client = openai.OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model="null-slow", messages=[{"role": "user", "content": "go"}], max_tokens=60, stream=True
    )
    text = "".join(choice.delta.content or "" for chunk in stream for choice in chunk.choices)
    assert text == expected_text(60)


def test_resume_with_last_event_id(stack: Stack, null_worker: StartWorker) -> None:
    null_worker("null-resume", "--tokens", "40")
    request_id = uuid.uuid4().hex
    with chat_stream(stack, "null-resume", 40, headers={"X-Request-Id": request_id}) as response:
        assert response.headers["X-Request-Id"] == request_id
        first = [e for e in events(response) if not e.done]
    cut = len(first) // 2
    assert first[cut].id
    with chat_stream(
        stack,
        "null-resume",
        40,
        headers={"X-Request-Id": request_id, "Last-Event-ID": first[cut].id},
    ) as response:
        assert response.status_code == 200, response.text
        rest = [e for e in events(response) if not e.done]
    assert [e.id for e in rest] == [e.id for e in first[cut + 1 :]]
    assert "".join(chunk_text(e) for e in rest) == "".join(chunk_text(e) for e in first[cut + 1 :])


def _unfinished_streams(client: redis.Redis, prefix: str) -> list[Any]:
    """Streams of the prefix whose last entry is neither ``done`` nor ``error``."""
    open_keys = []
    for key in client.scan_iter(f"{prefix}:stream:*", count=1000):
        last: Any = client.xrevrange(key, count=1)
        if not last or last[0][1].get("event") not in ("done", "error"):
            open_keys.append(key)
    return open_keys


def _final_event(client: redis.Redis, key: str) -> dict[str, str]:
    last: Any = client.xrevrange(key, count=1)
    return dict(last[0][1])


def test_client_disconnect_frees_the_worker_slot_within_a_second(
    stack: Stack, null_worker: StartWorker
) -> None:
    null_worker("null-disconnect", "--tokens", "100000", "--token_interval_ms", "10")
    client = stack.redis.client()
    request_id = uuid.uuid4().hex
    response = chat_stream(stack, "null-disconnect", 4000, headers={"X-Request-Id": request_id})
    stream = events(response)
    for _ in range(5):
        next(stream)
    key = f"{stack.prefix}:stream:{request_id}"
    assert key in _unfinished_streams(client, stack.prefix)
    response.close()
    closed_at = time.monotonic()
    while key in _unfinished_streams(client, stack.prefix):
        assert time.monotonic() - closed_at < 1.0, "the worker still generates for a gone client"
        time.sleep(0.02)
    final = _final_event(client, key)
    assert final["event"] == "done"
    assert set(json.loads(final["data"])["finish_reasons"].values()) == {"abort"}
    # Nothing is written after the end: once the worker holds nothing, the
    # stream has its final length.
    length = client.xlen(key)
    worker_url = next(w.url for w in stack.workers if w.name == "null-disconnect")
    deadline = time.monotonic() + 5
    while requests.get(f"{worker_url}/info", timeout=2).json()["extra"]["held"]:
        assert time.monotonic() < deadline, "the worker still holds the cancelled stream"
        time.sleep(0.02)
    assert client.xlen(key) == length


def test_disconnect_stops_a_real_generation_within_a_second(stack: Stack, tiny_llm: Worker) -> None:
    """The same on worker-hf: the generation ends, aborted, once the client is gone."""
    client = stack.redis.client()
    request_id = uuid.uuid4().hex
    response = requests.post(
        f"{stack.openai_url}/completions",
        json={
            "model": "tiny-llm",
            "prompt": "Once upon a time",
            "max_tokens": 900,
            "ignore_eos": True,
            "stream": True,
        },
        headers={"X-Request-Id": request_id},
        stream=True,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    stream = events(response)
    for _ in range(3):
        assert "error" not in next(stream).json()
    key = f"{stack.prefix}:stream:{request_id}"
    assert key in _unfinished_streams(client, stack.prefix)
    response.close()
    closed_at = time.monotonic()
    while key in _unfinished_streams(client, stack.prefix):
        assert time.monotonic() - closed_at < 1.0, "worker-hf still generates for a gone client"
        time.sleep(0.02)
    final = _final_event(client, key)
    assert final["event"] == "done"
    assert set(json.loads(final["data"])["finish_reasons"].values()) == {"abort"}


def test_worker_killed_mid_stream_gives_an_error_event(stack: Stack, null_worker: StartWorker) -> None:
    worker = null_worker("null-crash", "--tokens", "100000", "--token_interval_ms", "10")
    response = chat_stream(stack, "null-crash", 4000)
    stream = events(response)
    for _ in range(5):
        assert "error" not in next(stream).json()
    worker.kill()
    killed_at = time.monotonic()
    rest = []
    for event in stream:
        rest.append(event)
        if not event.done and "error" in event.json():
            break
    elapsed = time.monotonic() - killed_at
    response.close()
    errors = [e.json()["error"] for e in rest if not e.done and "error" in e.json()]
    assert errors, f"no error event after the worker died; got {rest[-3:]}"
    assert errors[0]["message"]
    assert elapsed < HEARTBEAT_DEADLINE_S + 1.5


def test_streams_for_a_dead_model_are_refused(stack: Stack, null_worker: StartWorker) -> None:
    worker = null_worker("null-gone", "--tokens", "5")
    worker.stop()
    response = chat_stream(stack, "null-gone", 5)
    # Deregistered on a clean stop: no replica left, so 503 (or 404 once forgotten).
    assert response.status_code == 503
    assert response.json()["error"]["type"]


@pytest.mark.parametrize("path", ["/openai/v1/completions", "/openai/v1/chat/completions"])
def test_stream_id_and_event_ids(stack: Stack, null_worker: StartWorker, path: str) -> None:
    null_worker("null-ids", "--tokens", "8")
    body: dict[str, Any] = {"model": "null-ids", "max_tokens": 8, "stream": True}
    if "chat" in path:
        body["messages"] = [{"role": "user", "content": "go"}]
    else:
        body["prompt"] = "go"
    with requests.post(f"{stack.router_url}{path}", json=body, stream=True, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        received = list(events(response))
    assert received[-1].done
    payloads = [e.json() for e in received[:-1]]
    assert len({p["id"] for p in payloads}) == 1
    assert all(e.id for e in received[:-1] if e.json()["choices"])
