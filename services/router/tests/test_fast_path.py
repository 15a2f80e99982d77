"""The fast path (``fast_path.FastPath``, what gunicorn serves) against the
Flask app it stands in front of: the same requests to the hot OpenAI
routes, through each, answer the same (status, body, the headers that
matter). The fast-path client's Flask app is replaced by one that fails,
so every answer below really came from the fast path."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from conftest import router_settings
from flask import Flask
from router_processes import Stack
from werkzeug.test import Client, EnvironBuilder, TestResponse, run_wsgi_app

from infergate_router.app import create_app
from infergate_router.fast_path import HOT_ROUTES, FastPath
from infergate_router.services import EXTENSION

KEY = "sk-fast-path-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 4096
COMPLETION = {"model": "null", "prompt": "hello there", "max_tokens": 4}
CHAT = {"model": "null", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# Headers both paths must agree on (present or absent, and their value).
COMPARED_HEADERS = ("Content-Type", "WWW-Authenticate", "Retry-After")


def _refuse_flask(environ: dict[str, Any], start_response: Any) -> Any:
    raise AssertionError(f"the fast path handed {environ['PATH_INFO']} to Flask")


@pytest.fixture(scope="module")
def app(stack: Stack) -> Iterator[Flask]:
    app = create_app(router_settings(stack, api_keys=[KEY], max_body_bytes=MAX_BODY))
    yield app
    app.extensions[EXTENSION].close()


@pytest.fixture(scope="module")
def clients(app: Flask) -> tuple[Client, Client]:
    fast = FastPath(app)
    fast.flask = _refuse_flask  # type: ignore[assignment]
    return Client(app), Client(fast)


def _normalized(response: TestResponse) -> Any:
    body = response.get_data()
    if response.mimetype == "text/event-stream":
        events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
        return [_strip(json.loads(e)) if e != "[DONE]" else e for e in events]
    return _strip(orjson.loads(body))


def _strip(value: Any) -> Any:
    """Without what differs between two answers to one request (ids, times)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("id", "created")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _same(flask_answer: TestResponse, fast_answer: TestResponse) -> TestResponse:
    assert fast_answer.status_code == flask_answer.status_code, fast_answer.get_data()
    assert _normalized(fast_answer) == _normalized(flask_answer)
    for header in COMPARED_HEADERS:
        assert fast_answer.headers.get(header) == flask_answer.headers.get(header), header
    assert fast_answer.headers.get("X-Request-Id")
    return fast_answer


def _both(clients: tuple[Client, Client], path: str, **kwargs: Any) -> TestResponse:
    flask_client, fast_client = clients
    return _same(flask_client.post(path, **kwargs), fast_client.post(path, **kwargs))


def test_the_hot_routes_are_flask_routes_too(app: Flask) -> None:
    rules = {rule.rule: rule for rule in app.url_map.iter_rules()}
    for path, (view, route) in HOT_ROUTES.items():
        assert route == path and path in rules
        assert "POST" in (rules[path].methods or set())
        assert app.view_functions[rules[path].endpoint] is view


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/openai/v1/completions", COMPLETION),
        ("/openai/v1/chat/completions", CHAT),
        ("/openai/v1/embeddings", {"model": "embed", "input": ["one", "two"]}),
        ("/openai/v1/completions", {**COMPLETION, "prompt": ["a", "b"], "n": 2}),
    ],
)
def test_answers_are_the_same(clients: tuple[Client, Client], path: str, body: dict[str, Any]) -> None:
    answer = _both(clients, path, json=body, headers=AUTH)
    assert answer.status_code == 200
    assert "usage" in answer.json  # type: ignore[operator]


def test_streams_are_the_same(clients: tuple[Client, Client]) -> None:
    answer = _both(clients, "/openai/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    assert answer.mimetype == "text/event-stream"
    events = _normalized(answer)
    assert events[-1] == "[DONE]" and len(events) > 2
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])


def test_the_client_request_id_is_kept(clients: tuple[Client, Client]) -> None:
    given = f"fast-{uuid.uuid4().hex}"
    answer = clients[1].post(
        "/openai/v1/completions", json=COMPLETION, headers={**AUTH, "X-Request-Id": given}
    )
    assert answer.status_code == 200
    assert answer.headers["X-Request-Id"] == given
    # Named under the key's namespace (guard.internal_request_id).
    assert answer.json["id"].startswith("cmpl-") and answer.json["id"].endswith(f"~{given}")  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "kwargs", "status"),
    [
        ("no key", {"json": COMPLETION}, 401),
        ("wrong key", {"json": COMPLETION, "headers": {"Authorization": "Bearer sk-nope"}}, 401),
        ("not JSON", {"data": b"{not json", "headers": {**AUTH, "Content-Type": "application/json"}}, 400),
        ("empty body", {"data": b"", "headers": AUTH}, 400),
        ("not an object", {"json": [1, 2], "headers": AUTH}, 400),
        ("unknown model", {"json": {**COMPLETION, "model": "nope"}, "headers": AUTH}, 404),
        ("bad value", {"json": {**COMPLETION, "max_tokens": -3}, "headers": AUTH}, 400),
        ("unsupported field", {"json": {**COMPLETION, "suffix": "x"}, "headers": AUTH}, 400),
        ("declared too large", {"data": b"x" * (MAX_BODY + 1), "headers": AUTH}, 413),
    ],
)
def test_errors_are_the_same(
    clients: tuple[Client, Client], name: str, kwargs: dict[str, Any], status: int
) -> None:
    answer = _both(clients, "/openai/v1/completions", **kwargs)
    assert answer.status_code == status, name
    error = answer.json["error"]  # type: ignore[index]
    assert error["message"] and error["type"]
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_body_without_length_past_the_limit_is_413(app: Flask) -> None:
    """A chunked body (no Content-Length) is read up to the limit, then refused."""
    fast = FastPath(app)
    fast.flask = _refuse_flask  # type: ignore[assignment]
    answers = []
    for target in (app, fast):
        builder = EnvironBuilder(
            path="/openai/v1/completions",
            method="POST",
            input_stream=io.BytesIO(b"x" * (MAX_BODY * 2)),
            headers=[*AUTH.items(), ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
        )
        environ = builder.get_environ()
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True
        body, status, _ = run_wsgi_app(target, environ, buffered=True)
        answers.append((status, orjson.loads(b"".join(body))))
    assert answers[0] == answers[1]
    status, error = answers[1]
    assert status.startswith("413")
    assert str(MAX_BODY) in error["error"]["message"]


def test_rate_limits_and_their_headers(stack: Stack) -> None:
    # A prefix of its own: the limiter's windows are not shared with other tests' limits on "embed".
    limits = json.dumps({"embed": {"rpm": 2}})
    app = create_app(router_settings(stack, model_limits=limits, stream_prefix=f"fp{uuid.uuid4().hex[:8]}"))
    try:
        fast = FastPath(app)
        fast.flask = _refuse_flask  # type: ignore[assignment]
        client = Client(fast)
        body = {"model": "embed", "input": "x"}
        answers = [client.post("/openai/v1/embeddings", json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        refused = answers[-1]
        assert "model embed" in refused.json["error"]["message"]  # type: ignore[index]
        assert int(refused.headers["Retry-After"]) >= 1
        assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
        assert answers[0].headers["x-ratelimit-remaining-requests"] == "1"
    finally:
        app.extensions[EXTENSION].close()


def test_other_requests_reach_flask(app: Flask) -> None:
    client = Client(FastPath(app))
    assert client.get("/openai/v1/models", headers=AUTH).status_code == 200
    assert client.get("/").json == {"status": "alive"}
    # A GET to a hot path is Flask's to refuse.
    assert client.get("/openai/v1/completions", headers=AUTH).status_code == 405
