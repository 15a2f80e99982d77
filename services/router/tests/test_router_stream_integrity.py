"""The router's integrity checks on token streams, under real gunicorn+gevent
over a real Redis: streams written entry by entry here (as a broken or
retrying worker would leave them) and read back through
``GET /openai/v1/streams/<id>``: a hole ends the stream with an error event
(never text with a hole then ``[DONE]``), a delta written twice is relayed
once, and a resume checks its continuation too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from router_processes import Stack
from sse_client import events

from infergate_common.streams import DeltaEvent, DoneEvent, StreamEvent, encode_event, stream_key
from infergate_common.worker_api import Usage
from infergate_router.protocols.openai.models import StreamNote


@pytest.fixture(scope="module")
def router(stack: Stack) -> Iterator[str]:
    process, url = stack.start_router(INFERGATE_HEARTBEAT_DEADLINE_S="2")
    yield url
    process.stop()


def _delta(seq: int, text: str, finish: str | None = None) -> DeltaEvent:
    return DeltaEvent(seq=seq, index=0, text=text, tokens=1, finish_reason=finish)  # type: ignore[arg-type]


def _done(deltas: int) -> DoneEvent:
    usage = Usage(prompt_tokens=1, total_tokens=1)
    return DoneEvent(deltas=deltas, finish_reasons={"0": "stop"}, usage=usage)


def _write(stack: Stack, entries: list[StreamEvent]) -> tuple[str, list[str]]:
    """A stream as a worker would have left it; returns its request id and entry ids."""
    request_id = f"integrity-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(stack.redis_url)
    try:
        note = StreamNote(kind="completion", model="m", created=1, n=1, include_usage=False)
        client.set(f"{stack.prefix}:streamnote:{request_id}", note.model_dump_json(), ex=60)
        key = stream_key(stack.prefix, request_id)
        ids = [client.xadd(key, encode_event(entry)).decode() for entry in entries]  # type: ignore[union-attr]
        client.expire(key, 60)
    finally:
        client.close()
    return request_id, ids


def _read(router: str, request_id: str, last_id: str | None = None) -> list[tuple[str | None, Any]]:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    url = f"{router}/openai/v1/streams/{request_id}"
    with requests.get(url, headers=headers, stream=True, timeout=10) as response:
        assert response.status_code == 200, response.text
        return list(events(response))


def _texts(received: list[tuple[str | None, Any]]) -> list[str]:
    chunks = [data for _, data in received if isinstance(data, dict) and "choices" in data]
    return [chunk["choices"][0]["text"] for chunk in chunks]


def test_a_whole_stream_ends_with_done(router: str, stack: Stack) -> None:
    request_id, _ = _write(stack, [_delta(0, "a"), _delta(1, "b"), _delta(2, "c", "stop"), _done(3)])
    received = _read(router, request_id)
    assert _texts(received) == ["a", "b", "c"]
    assert received[-1] == (None, "[DONE]")


def test_a_hole_ends_the_stream_with_an_error_not_done(router: str, stack: Stack) -> None:
    request_id, _ = _write(stack, [_delta(0, "a"), _delta(1, "b"), _delta(3, "d", "stop"), _done(4)])
    received = _read(router, request_id)
    assert _texts(received) == ["a", "b"]
    assert (None, "[DONE]") not in received
    error = received[-1][1]["error"]
    assert "lost entries" in error["message"] and "delta 2 missing" in error["message"]
    assert error["type"] == "upstream_error" and error["code"] == "502"


def test_lost_trailing_deltas_are_caught_by_the_done_count(router: str, stack: Stack) -> None:
    request_id, _ = _write(stack, [_delta(0, "a"), _delta(1, "b"), _done(3)])
    received = _read(router, request_id)
    assert _texts(received) == ["a", "b"]
    assert (None, "[DONE]") not in received
    assert "3 deltas written, 2 read" in received[-1][1]["error"]["message"]


def test_a_delta_written_twice_is_relayed_once(router: str, stack: Stack) -> None:
    # A batch retried after its reply was lost lands twice.
    entries: list[StreamEvent] = [_delta(0, "a"), _delta(1, "b"), _delta(0, "a"), _delta(1, "b")]
    request_id, _ = _write(stack, [*entries, _delta(2, "c", "stop"), _done(3), _done(3)])
    received = _read(router, request_id)
    assert _texts(received) == ["a", "b", "c"]
    assert received[-1] == (None, "[DONE]")


def test_a_resume_checks_what_follows_its_last_event_id(router: str, stack: Stack) -> None:
    request_id, ids = _write(stack, [_delta(0, "a"), _delta(1, "b"), _delta(2, "c", "stop"), _done(3)])
    assert _texts(_read(router, request_id, ids[0])) == ["b", "c"]
    broken, broken_ids = _write(stack, [_delta(0, "a"), _delta(1, "b"), _delta(3, "d", "stop"), _done(4)])
    received = _read(router, broken, broken_ids[0])
    assert _texts(received) == ["b"]
    assert "delta 2 missing" in received[-1][1]["error"]["message"]


def test_a_last_event_id_that_names_no_entry_is_404(router: str, stack: Stack) -> None:
    request_id, ids = _write(stack, [_delta(0, "a"), _delta(1, "b", "stop"), _done(2)])
    millis, _, seq = ids[0].partition("-")
    missing = f"{millis}-{int(seq) + 100}"
    response = requests.get(
        f"{router}/openai/v1/streams/{request_id}", headers={"Last-Event-ID": missing}, timeout=10
    )
    assert response.status_code == 404, response.text
    assert "Last-Event-ID" in response.json()["error"]["message"]
