"""The worker HTTP app over the benchmark engine, through Flask's test client."""

from __future__ import annotations

import time

import pytest
import redis
from flask.testing import FlaskClient

from infergate_common.null_engine import NullEngine
from infergate_common.streams import DoneEvent, decode_event, stream_key
from infergate_common.worker_api import Task
from infergate_common.worker_app import create_worker_app


@pytest.fixture
def engine(redis_url: str) -> NullEngine:
    return NullEngine("null", Task.TEXT_GENERATION, 4, 0.0, redis.Redis.from_url(redis_url), "wa")


@pytest.fixture
def client(engine: NullEngine) -> FlaskClient:
    return create_worker_app(engine, lambda rid: stream_key("wa", rid)).test_client()


def test_not_ready_until_loaded(engine: NullEngine, client: FlaskClient) -> None:
    assert client.get("/readyz").status_code == 503
    answer = client.post("/generate", json={"request_id": "a", "prompt": "x"})
    assert answer.status_code == 503
    assert answer.get_json()["error"]["type"] == "service_unavailable_error"
    engine.load()
    assert client.get("/readyz").get_json() == {"ready": True}


def test_generate_and_validation(engine: NullEngine, client: FlaskClient) -> None:
    engine.load()
    ok = client.post("/generate", json={"request_id": "a", "prompt": "one two", "params": {"max_tokens": 2}})
    assert ok.status_code == 200
    body = ok.get_json()
    assert body["choices"][0]["text"] == "tok0 tok1 "
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}

    bad = client.post("/generate", json={"request_id": "b", "prompt": "x", "params": {"temperature": 9}})
    assert bad.status_code == 400
    assert bad.get_json()["error"]["param"] == "params.temperature"
    assert client.post("/generate", data="{", content_type="application/json").status_code == 400
    assert client.post("/encode", json={"request_id": "c", "inputs": ["x"]}).status_code == 400


def test_streaming_answers_202_then_writes_the_stream(
    engine: NullEngine, client: FlaskClient, redis_url: str
) -> None:
    engine.load()
    answer = client.post("/generate", json={"request_id": "s1", "prompt": "x", "stream": True})
    assert answer.status_code == 202
    key = answer.get_json()["stream_key"]
    assert key == stream_key("wa", "s1")
    reader = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 5
    events = []
    while time.monotonic() < deadline:
        events = [decode_event(fields) for _, fields in reader.xrange(key)]
        if events and isinstance(events[-1], DoneEvent):
            break
        time.sleep(0.02)
    texts = [e.text for e in events if e.event == "delta"]
    assert texts == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert isinstance(events[-1], DoneEvent)
