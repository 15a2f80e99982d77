"""Small parts on their own: SSE framing, host names, replica choice,
the metrics exposition, settings from the environment."""

from __future__ import annotations

import socket

from infergate_common.registry_api import ModelRecord, ReplicaRecord
from infergate_common.worker_api import Backend, Task
from infergate_router.client_watch import ClientWatcher
from infergate_router.metrics import RouterMetrics
from infergate_router.model_directory import normalise_host
from infergate_router.replica_choice import InFlight
from infergate_router.settings import RouterSettings, settings_from_env
from infergate_router.sse import DONE, KEEPALIVE, SseEvent, frame, sse_response


def test_sse_frames() -> None:
    assert frame(SseEvent({"a": 1}, "5-0")) == b'id: 5-0\ndata: {"a":1}\n\n'
    assert frame(SseEvent(DONE)) == b"data: [DONE]\n\n"
    assert frame(KEEPALIVE) == b": keep-alive\n"


def test_normalise_host() -> None:
    assert normalise_host("Llama.Example.COM:8080") == "llama.example.com"
    assert normalise_host("[::1]:8080") == "[::1]"
    assert normalise_host(None) == ""


def _model(*urls: str, ready: bool = True) -> ModelRecord:
    return ModelRecord(
        name="m",
        model_id="x",
        task=Task.TEXT_GENERATION,
        backend=Backend.NULL,
        replicas=[ReplicaRecord(url=url, ready=ready) for url in urls],
    )


def test_replica_with_fewest_in_flight_is_chosen() -> None:
    inflight = InFlight()
    model = _model("http://a", "http://b", "http://c")
    inflight.acquire("http://a")
    inflight.acquire("http://b")
    inflight.acquire("http://b")
    assert inflight.choose(model).url == "http://c"
    inflight.acquire("http://c")
    assert inflight.choose(model).url in {"http://a", "http://c"}
    assert inflight.choose(model, exclude={"http://a", "http://c"}).url == "http://b"
    inflight.release("http://b")
    inflight.release("http://b")
    assert inflight.count("http://b") == 0 and inflight.total() == 2


def test_no_ready_replica_raises_503() -> None:
    inflight = InFlight()
    try:
        inflight.choose(_model("http://a", ready=False))
    except Exception as exc:
        assert getattr(exc, "status", None) == 503
    else:
        raise AssertionError("expected a 503")


def test_metrics_exposition() -> None:
    metrics = RouterMetrics()
    metrics.request("/openai/v1/completions", "POST", 200, 0.02)
    metrics.first_token("m", 0.3)
    metrics.per_output_token("m", 0.01)
    metrics.tokens("m", 5, 7)
    metrics.stream_started("m")
    metrics.output_tokens("m", 3)
    text = metrics.render().decode()
    assert "# TYPE infergate_router_requests_total counter" in text
    assert 'route="/openai/v1/completions"' in text and 'status="200"' in text
    assert 'infergate_router_output_tokens_total{model="m"} 10.0' in text
    assert 'infergate_router_prompt_tokens_total{model="m"} 5.0' in text
    assert 'infergate_router_streams_open{model="m"} 1.0' in text
    bucket = [
        line
        for line in text.splitlines()
        if "time_to_first_token_seconds_bucket" in line and 'le="0.5"' in line
    ]
    assert bucket and bucket[0].endswith(" 1.0")
    assert 'le="+Inf"' in text


def test_settings_from_env(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INFERGATE_API_KEYS", "a, b")
    monkeypatch.setenv("INFERGATE_HEARTBEAT_DEADLINE_S", "1.5")
    settings = settings_from_env()
    assert settings.api_keys == ["a", "b"]
    assert settings.heartbeat_deadline_s == 1.5
    assert RouterSettings().max_body_bytes == 8 * 1024 * 1024


def test_sse_body_closed_before_iteration_still_runs_on_close() -> None:
    closed: list[str] = []

    def events():  # type: ignore[no-untyped-def]
        try:
            yield SseEvent({"a": 1})
        finally:
            closed.append("generator")

    response = sse_response(events(), on_close=lambda: closed.append("on_close"))
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    response.close()
    assert closed == ["on_close"]


def test_a_client_that_left_is_seen_without_waiting() -> None:
    ours, theirs = socket.socketpair()
    try:
        watcher = ClientWatcher(ours)
        assert not watcher.gone()  # connected, nothing sent
        theirs.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request is not a goodbye
        assert not watcher.gone()
        assert ours.recv(64)
        theirs.close()
        assert watcher.gone()
    finally:
        ours.close()
