"""Token streams through the router under real gunicorn+gevent: order,
isolation, cancel on disconnect, a worker killed mid-stream, resuming with
Last-Event-ID, and the official ``openai`` SDK."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import openai
import pytest
import redis
import requests
from router_processes import Stack
from sse_client import events

from infergate_common.streams import decode_event, stream_key

DEADLINE_S = 2.0


@pytest.fixture(scope="module")
def router(stack: Stack) -> Iterator[str]:
    process, url = stack.start_router(INFERGATE_HEARTBEAT_DEADLINE_S=str(DEADLINE_S))
    yield url
    process.stop()


@pytest.fixture(scope="module")
def slow_model(stack: Stack) -> str:
    """A worker that streams 20 tokens, 5 ms apart."""
    stack.start_null_worker("slow", tokens=20, interval_ms=5)
    return "slow"


def _post_stream(url: str, path: str, body: dict, **headers: str) -> requests.Response:
    response = requests.post(f"{url}{path}", json=body, headers=headers, stream=True, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return response


def test_completion_stream_every_token_once_in_order(router: str) -> None:
    body = {"model": "null", "prompt": "x", "max_tokens": 100, "n": 2, "stream": True}
    received = list(events(_post_stream(router, "/openai/v1/completions", body)))
    assert received[-1] == (None, "[DONE]")
    chunks = [(event_id, data) for event_id, data in received[:-1]]
    ids = [tuple(int(part) for part in event_id.split("-")) for event_id, _ in chunks if event_id]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for index in (0, 1):
        mine = [data["choices"][0] for _, data in chunks if data["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == "".join(f"tok{i} " for i in range(8))
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + ["stop"]
        assert all(data["object"] == "text_completion" for _, data in chunks)


def test_fifty_concurrent_streams_do_not_mix(router: str, slow_model: str) -> None:
    results: dict[str, tuple[str, list[str], str]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            request_id = f"mix-{uuid.uuid4().hex}"
            max_tokens = 5 + i % 15
            body = {
                "model": slow_model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": max_tokens,
                "stream": True,
            }
            response = _post_stream(
                router, "/openai/v1/chat/completions", body, **{"X-Request-Id": request_id}
            )
            got = list(events(response))
            texts = [d["choices"][0]["delta"].get("content", "") for _, d in got[:-1] if d["choices"]]
            chunk_ids = {d["id"] for _, d in got[:-1]}
            results[request_id] = (
                "".join(texts),
                sorted(chunk_ids),
                "".join(f"tok{t} " for t in range(max_tokens)),
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]
    assert len(results) == 50
    for request_id, (text, chunk_ids, expected) in results.items():
        assert chunk_ids == [f"chatcmpl-{request_id}"]
        assert text == expected


def _stream_entries(stack: Stack, request_id: str) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        entries = client.xrange(stream_key(stack.prefix, request_id))
    finally:
        client.close()
    return [(entry_id.decode(), decode_event(fields).event) for entry_id, fields in entries]


def test_client_disconnect_cancels_the_generation(router: str, stack: Stack) -> None:
    stack.start_null_worker("endless", tokens=100_000, interval_ms=5)
    request_id = f"gone-{uuid.uuid4().hex}"
    body = {"model": "endless", "prompt": "x", "max_tokens": None, "stream": True}
    response = _post_stream(router, "/openai/v1/completions", body, **{"X-Request-Id": request_id})
    reader = events(response)
    for _ in range(3):
        next(reader)
    response.close()
    deadline = time.monotonic() + 5
    while (first := _stream_entries(stack, request_id))[-1][1] != "done":
        assert time.monotonic() < deadline, "the worker did not end the stream after /cancel"
        time.sleep(0.05)
    # An ended stream gets its expiry: nothing is written after the done entry.
    assert first[-1][1] == "done" and [kind for _, kind in first].count("done") == 1
    assert len(first) < 1000


def test_worker_killed_mid_stream_gives_an_error_event(router: str, stack: Stack) -> None:
    process, _ = stack.start_null_worker("doomed", tokens=100_000, interval_ms=20)
    body = {"model": "doomed", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = _post_stream(router, "/openai/v1/chat/completions", body)
    reader = events(response)
    for _ in range(3):
        next(reader)
    process.kill()
    killed_at = time.monotonic()
    last = None
    for _, data in reader:
        last = data
    elapsed = time.monotonic() - killed_at
    assert isinstance(last, dict) and "error" in last, last
    assert last["error"]["type"] == "timeout_error"
    assert elapsed < DEADLINE_S + 1.0


def test_resume_with_last_event_id(router: str) -> None:
    request_id = f"resume-{uuid.uuid4().hex}"
    body = {"model": "null", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    full = list(
        events(_post_stream(router, "/openai/v1/chat/completions", body, **{"X-Request-Id": request_id}))
    )
    third_id = full[2][0]
    assert third_id is not None
    again = list(
        events(
            _post_stream(
                router,
                "/openai/v1/chat/completions",
                body,
                **{"X-Request-Id": request_id, "Last-Event-ID": third_id},
            )
        )
    )
    assert again[-1] == (None, "[DONE]")
    resumed_text = "".join(d["choices"][0]["delta"].get("content", "") for _, d in again[:-1])
    assert resumed_text == "".join(f"tok{i} " for i in range(3, 8))
    assert [event_id for event_id, _ in again[:-1]] == [event_id for event_id, _ in full[3:-1]]


def test_reusing_a_stream_request_id_without_last_event_id_is_refused(router: str) -> None:
    request_id = f"dup-{uuid.uuid4().hex}"
    body = {"model": "null", "prompt": "x", "stream": True}
    list(events(_post_stream(router, "/openai/v1/completions", body, **{"X-Request-Id": request_id})))
    response = requests.post(
        f"{router}/openai/v1/completions", json=body, headers={"X-Request-Id": request_id}, timeout=10
    )
    assert response.status_code == 409
    assert "Last-Event-ID" in response.json()["error"]["message"]


def test_openai_sdk_plain_and_streaming(router: str) -> None:
    client = openai.OpenAI(base_url=f"{router}/openai/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(model="null", prompt="hello", max_tokens=4)
    assert completion.choices[0].text == "tok0 tok1 tok2 tok3 "
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 4

    chat = client.chat.completions.create(model="null", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == "".join(f"tok{i} " for i in range(8))

    stream = client.chat.completions.create(
        model="null",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"tok{i} " for i in range(8))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8

    models = {m.id: m for m in client.models.list()}
    assert models["null"].model_extra is not None and models["null"].model_extra["task"] == "text_generation"

    embedding = client.embeddings.create(model="embed", input=["one two", "three"])
    assert [d.index for d in embedding.data] == [0, 1]
    assert embedding.usage.prompt_tokens == 3


def test_get_stream_replays_from_last_event_id(router: str) -> None:
    request_id = f"replay-{uuid.uuid4().hex}"
    body = {"model": "null", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    full = list(events(_post_stream(router, "/openai/v1/completions", body, **{"X-Request-Id": request_id})))
    url = f"{router}/openai/v1/streams/{request_id}"
    replay = list(events(requests.get(url, stream=True, timeout=10)))
    assert replay == full
    tail = list(events(requests.get(url, headers={"Last-Event-ID": full[4][0]}, stream=True, timeout=10)))
    assert tail == full[5:]
    assert requests.get(f"{router}/openai/v1/streams/never-{request_id}", timeout=10).status_code == 404
