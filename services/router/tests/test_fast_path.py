"""The fast path (``fast_path.FastPath``, what gunicorn serves) against the
Flask app it stands in front of: the same requests to the hot routes
(OpenAI's, KServe v1 predict and v2 infer), through each, answer the same (status, body, the headers that
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
from flask import Flask, Response
from router_processes import Stack
from werkzeug.test import Client, EnvironBuilder, TestResponse, run_wsgi_app

from infergate_router.app import create_app
from infergate_router.fast_path import EXACT_ROUTES, PATTERN_ROUTES, FastPath, hot_route, start
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
        return {k: _strip(v) for k, v in value.items() if k not in ("id", "created", "request_id")}
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
    routes = [*EXACT_ROUTES.values(), *(route for group in PATTERN_ROUTES.values() for _, route in group)]
    assert len(routes) == 6
    for route in routes:
        assert route.rule in rules, route.rule
        assert "POST" in (rules[route.rule].methods or set())
        assert app.view_functions[rules[route.rule].endpoint] is route.view


@pytest.mark.parametrize(
    "path",
    [
        "/openai/v1/completions",
        "/v1/models/embed:predict",
        "/v1/models/a:b:predict",
        "/v1/models/a.b-c_d:predict",
        "/v2/models/embed/infer",
        "/v2/models/embed/versions/3/infer",
        "/v2/models/é/infer",
        # Not hot: Flask's to answer (or refuse).
        "/v1/models/:predict",
        "/v1/models/a/b:predict",
        "/v1/models/embed:predict/",
        "/v2/models/embed/infer/",
        "/v2//models/embed/infer",
        "/v2/models/embed/versions//infer",
        "/v2/models/embed/ready",
        "/openai/v1/completions/",
    ],
)
def test_a_hot_path_is_matched_as_flask_matches_it(app: Flask, path: str) -> None:
    """The same view with the same parameters, or not hot at all when
    Flask would not take the path as is (a redirect, a 404, another rule)."""
    adapter = app.url_map.bind("localhost", path_info=path, url_scheme="http")
    try:
        endpoint, args = adapter.match(method="POST")
        flask_match: tuple[Any, dict[str, Any]] | None = (app.view_functions[endpoint], args)
    except Exception:
        flask_match = None
    hot = hot_route(path.encode().decode("latin-1"))  # the path as WSGI carries it
    if hot is None:
        hot_views = {route.view for group in PATTERN_ROUTES.values() for _, route in group}
        hot_views |= {route.view for route in EXACT_ROUTES.values()}
        assert flask_match is None or flask_match[0] not in hot_views, path
    else:
        route, args = hot
        assert flask_match is not None, path
        assert (route.view, args) == flask_match, path


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


def _v2(datatype: str, data: list[Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "t", "shape": [len(data)], "datatype": datatype, "data": data}], **extra}


V2_BINARY_TEXT = (
    b'{"inputs":[{"name":"t","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":4}}]}'
)
NO_TOKENS = {"max_tokens": 4}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/embed:predict", {"instances": ["one", "two"]}),
        ("/v1/models/null:predict", {"instances": ["hello"], "parameters": NO_TOKENS}),
        ("/v1/models/null:predict", {"instances": ["hello"], "parameters": {**NO_TOKENS, "stream": True}}),
        ("/v2/models/embed/infer", _v2("BYTES", ["a", "b"])),
        ("/v2/models/null/versions/1/infer", _v2("BYTES", ["hi"], parameters=NO_TOKENS)),
    ],
)
def test_kserve_answers_are_the_same(clients: tuple[Client, Client], path: str, body: dict[str, Any]) -> None:
    answer = _both(clients, path, json=body, headers=AUTH)
    assert answer.status_code == 200, answer.get_data()
    if answer.mimetype == "text/event-stream":
        events = _normalized(answer)
        assert events[-1] == "[DONE]" and "usage" in events[-2]
    else:
        assert answer.json.get("predictions") or answer.json.get("outputs")  # type: ignore[union-attr]


def _json(body: Any) -> dict[str, Any]:
    return {"json": body, "headers": AUTH}


KSERVE_ERRORS = [
    ("no key", "/v1/models/embed:predict", {"json": {"instances": ["x"]}}, 401),
    ("not JSON", "/v1/models/embed:predict", {"data": b"[", "headers": AUTH}, 400),
    ("no instances", "/v1/models/embed:predict", _json({"rows": 1}), 400),
    ("unknown model", "/v1/models/nope:predict", _json({"instances": ["x"]}), 404),
    ("unknown model, UTF-8 name", "/v1/models/n%C3%A9:predict", _json({"instances": ["x"]}), 404),
    ("colon in the name", "/v1/models/a:b:predict", _json({"instances": ["x"]}), 404),
    ("declared too large", "/v1/models/embed:predict", {"data": b"x" * (MAX_BODY + 1), "headers": AUTH}, 413),
    ("v2 wrong datatype", "/v2/models/embed/infer", _json(_v2("FP32", [1.0])), 400),
    (
        "v2 binary text",
        "/v2/models/embed/infer",
        {
            "data": V2_BINARY_TEXT + b"abcd",
            "headers": {**AUTH, "Inference-Header-Content-Length": str(len(V2_BINARY_TEXT))},
        },
        400,
    ),
    ("v2 unknown model", "/v2/models/nope/versions/2/infer", _json(_v2("BYTES", ["a"])), 404),
]


@pytest.mark.parametrize(
    ("name", "path", "kwargs", "status"), KSERVE_ERRORS, ids=[error[0] for error in KSERVE_ERRORS]
)
def test_kserve_errors_are_the_same(
    clients: tuple[Client, Client], name: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    answer = _both(clients, path, **kwargs)
    assert answer.status_code == status, (name, answer.get_data())
    assert answer.json["error"]  # type: ignore[index]  # KServe's shape: {"error": "..."}
    if name.startswith("unknown model, UTF-8"):
        assert "né" in answer.json["error"]  # type: ignore[index]


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
    assert client.get("/v2/models/embed/infer", headers=AUTH).status_code == 405
    assert client.get("/v2/models/embed/ready", headers=AUTH).status_code == 200


def _started(call: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    """What a WSGI server sends for ``call(start_response)``, closing the
    body afterwards as a server does."""
    started: list[Any] = []
    iterable = call(lambda status, headers, exc_info=None: started.append((status, headers)))
    body = b"".join(iterable)
    if hasattr(iterable, "close"):
        iterable.close()
    return started[0][0], started[0][1], body


@pytest.mark.parametrize(
    "make",
    [
        lambda: Response(b'{"a": 1}', mimetype="application/json"),
        lambda: Response("ünï", status=400, headers={"Retry-After": "1", "X-Request-Id": "r"}),
        lambda: Response(b"", status=204),
        lambda: Response(b"moved", status=307, headers={"Location": "/elsewhere"}),
        lambda: Response(b"x", headers={"Content-Location": "/ä"}),
        lambda: Response(iter([b"a", b"b"]), mimetype="text/event-stream"),
    ],
)
def test_a_response_starts_as_werkzeug_starts_it(make: Any) -> None:
    environ = EnvironBuilder(path="/openai/v1/completions", method="POST").get_environ()
    assert _started(lambda sr: start(make(), environ, sr)) == _started(lambda sr: make()(environ, sr))


def test_a_response_with_a_close_callback_is_still_closed() -> None:
    environ = EnvironBuilder(path="/openai/v1/completions", method="POST").get_environ()
    closed: list[str] = []
    response = Response(b"{}", mimetype="application/json")
    response.call_on_close(lambda: closed.append("closed"))
    assert _started(lambda sr: start(response, environ, sr))[2] == b"{}"
    assert closed == ["closed"]
