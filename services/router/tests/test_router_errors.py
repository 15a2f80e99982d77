"""Validation at the edge and errors in each protocol's own shape, through
the Flask test client against the real registry and null workers."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest
from conftest import router_settings
from flask import Flask
from flask.testing import FlaskClient
from registry_records import register
from router_processes import Stack, free_port

from infergate_router.app import create_app
from infergate_router.services import EXTENSION
from infergate_router.settings import RouterSettings

CHAT = {"model": "null", "messages": [{"role": "user", "content": "hi"}]}


def openai_error(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def kserve_error(response, status: int) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]  # type: ignore[no-any-return]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def make_client(stack: Stack) -> Iterator:  # type: ignore[type-arg]
    apps: list[Flask] = []

    def make(settings: RouterSettings | None = None, **overrides: object) -> FlaskClient:
        app = create_app(settings or router_settings(stack, **overrides))
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions[EXTENSION].close()


# ------------------------------------------------------------- malformed


def test_malformed_json_is_400_in_each_shape(client: FlaskClient) -> None:
    headers = {"Content-Type": "application/json"}
    error = openai_error(client.post("/openai/v1/chat/completions", data="{nope", headers=headers), 400)
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in error["message"]
    assert "not valid JSON" in kserve_error(
        client.post("/v1/models/null:predict", data="[", headers=headers), 400
    )
    assert "JSON object" in kserve_error(
        client.post("/v2/models/embed/infer", data="[1]", headers=headers), 400
    )
    assert "empty" in openai_error(client.post("/openai/v1/completions", data=""), 400)["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 0),
        ("n", 129),
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("top_p", 1.5),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("max_tokens", 0),
        ("temperature", "hot"),
        ("n", "2"),
        ("stream", "yes"),
        ("top_logprobs", 21),
    ],
)
def test_wrong_types_and_ranges_are_400_naming_the_field(
    client: FlaskClient, field: str, value: object
) -> None:
    body = {**CHAT, field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    error = openai_error(client.post("/openai/v1/chat/completions", json=body), 400)
    assert error["param"] == field
    assert field in error["message"]


def test_completion_logprobs_range(client: FlaskClient) -> None:
    body = {"model": "null", "prompt": "x", "logprobs": 6}
    assert openai_error(client.post("/openai/v1/completions", json=body), 400)["param"] == "logprobs"


def test_missing_required_field(client: FlaskClient) -> None:
    error = openai_error(client.post("/openai/v1/chat/completions", json={"model": "null"}), 400)
    assert error["param"] == "messages"


def test_unknown_extra_fields_are_tolerated(client: FlaskClient) -> None:
    body = {**CHAT, "brand_new_option": {"x": 1}, "logit_bias": {"5": 1}, "metadata": None}
    response = client.post("/openai/v1/chat/completions", json=body)
    assert response.status_code == 200, response.get_json()


# ---------------------------------------------------------------- models


def test_unknown_model_is_404_in_each_shape(client: FlaskClient) -> None:
    error = openai_error(client.post("/openai/v1/chat/completions", json={**CHAT, "model": "nope"}), 404)
    assert error["message"] == "Model with name nope does not exist."
    assert error["code"] == "model_not_found" and error["param"] == "model"
    message = "Model with name nope does not exist."
    assert kserve_error(client.post("/v1/models/nope:predict", json={"instances": ["a"]}), 404) == message
    assert kserve_error(client.get("/v1/models/nope"), 404) == message
    assert kserve_error(client.get("/v2/models/nope"), 404) == message
    assert kserve_error(client.get("/v2/models/nope/ready"), 404) == message
    body = {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
    assert kserve_error(client.post("/v2/models/nope/infer", json=body), 404) == message


def test_task_mismatch_is_400(client: FlaskClient) -> None:
    error = openai_error(client.post("/openai/v1/completions", json={"model": "embed", "prompt": "x"}), 400)
    assert "text_embedding" in error["message"] and "/embeddings" in error["message"]
    error = openai_error(client.post("/openai/v1/embeddings", json={"model": "null", "input": "x"}), 400)
    assert "does not support /embeddings" in error["message"]


def test_chat_without_template_and_echo_on_encoder_decoder_are_400(client: FlaskClient, stack: Stack) -> None:
    name = unique("t5ish")
    register(stack.registry_url, name, "http://127.0.0.1:9", chat_template=False, encoder_decoder=True)
    error = openai_error(client.post("/openai/v1/chat/completions", json={**CHAT, "model": name}), 400)
    assert "no chat template" in error["message"]
    body = {"model": name, "prompt": "x", "echo": True}
    error = openai_error(client.post("/openai/v1/completions", json=body), 400)
    assert error["param"] == "echo" and "encoder-decoder" in error["message"]


def test_no_ready_replica_is_503(client: FlaskClient, stack: Stack) -> None:
    name = unique("loading")
    register(stack.registry_url, name, f"http://127.0.0.1:{free_port()}", ready=False)
    error = openai_error(client.post("/openai/v1/chat/completions", json={**CHAT, "model": name}), 503)
    assert "no ready replica" in error["message"]
    assert "not ready" in kserve_error(client.get(f"/v1/models/{name}"), 503)
    assert client.get(f"/v2/models/{name}/ready").status_code == 503


def test_unreachable_worker_is_503(client: FlaskClient, stack: Stack) -> None:
    name = unique("gone")
    register(stack.registry_url, name, f"http://127.0.0.1:{free_port()}")
    error = openai_error(client.post("/openai/v1/chat/completions", json={**CHAT, "model": name}), 503)
    assert "could be reached" in error["message"]


def test_unreachable_replica_is_skipped_for_a_live_one(client: FlaskClient, stack: Stack) -> None:
    _, _live_url = stack.start_null_worker("twin", tokens=2)
    register(stack.registry_url, "twin", f"http://127.0.0.1:{free_port()}")
    for _ in range(6):
        response = client.post("/openai/v1/chat/completions", json={**CHAT, "model": "twin"})
        assert response.status_code == 200, response.get_json()


def test_worker_timeout_is_504(make_client, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        name = unique("silent")
        register(stack.registry_url, name, f"http://127.0.0.1:{silent.getsockname()[1]}")
        client = make_client(request_timeout_s=0.5)
        error = openai_error(client.post("/openai/v1/chat/completions", json={**CHAT, "model": name}), 504)
        assert error["type"] == "timeout_error"
    finally:
        silent.close()


def test_registry_unreachable_is_503_in_each_shape(make_client, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    client = make_client(registry_url=f"http://127.0.0.1:{free_port()}")
    error = openai_error(client.post("/openai/v1/chat/completions", json=CHAT), 503)
    assert "registry" in error["message"]
    assert "registry" in kserve_error(client.post("/v1/models/null:predict", json={"instances": ["a"]}), 503)
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/health/live").get_json() == {"live": True}


# ------------------------------------------------------------ the edges


def test_body_too_large_is_413_in_each_shape(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_body_bytes=2048)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert (
        openai_error(client.post("/openai/v1/chat/completions", json=big), 413)["type"]
        == "invalid_request_error"
    )
    assert "exceeds" in kserve_error(
        client.post("/v1/models/null:predict", json={"instances": ["x" * 5000]}), 413
    )


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/completions",
        "/completions",
        "/v1/embeddings",
        "/embeddings",
    ],
)
def test_near_miss_paths_name_the_right_base_url(client: FlaskClient, path: str) -> None:
    error = openai_error(client.post(path, json=CHAT), 404)
    assert "base_url='http://localhost/openai/v1'" in error["message"]


def test_unknown_route_is_404_in_the_path_protocol_shape(client: FlaskClient) -> None:
    openai_error(client.get("/openai/v1/nothing"), 404)
    kserve_error(client.get("/v2/nothing/here"), 404)
    openai_error(client.get("/openai/v1/chat/completions"), 405)


def test_api_keys(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=["k-one", "k-two"])
    error = openai_error(client.post("/openai/v1/chat/completions", json=CHAT), 401)
    assert error["type"] == "authentication_error"
    assert "Bearer" in kserve_error(client.get("/v1/models"), 401)
    wrong = {"Authorization": "Bearer k-three"}
    openai_error(client.post("/openai/v1/chat/completions", json=CHAT, headers=wrong), 401)
    good = {"Authorization": "Bearer k-two"}
    assert client.post("/openai/v1/chat/completions", json=CHAT, headers=good).status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/v2/health/live").status_code == 200


def test_request_id_is_taken_from_the_client_or_made(client: FlaskClient) -> None:
    response = client.post("/openai/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    assert response.get_json()["id"] == "chatcmpl-abc-123"
    made = client.get("/").headers["X-Request-Id"]
    assert len(made) == 32 and made != client.get("/").headers["X-Request-Id"]


def test_bad_last_event_id_is_400(client: FlaskClient) -> None:
    headers = {"X-Request-Id": "r1", "Last-Event-ID": "not-an-id"}
    error = openai_error(
        client.post("/openai/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers), 400
    )
    assert "Last-Event-ID" in error["message"]


def test_stream_with_redis_unreachable_is_503_before_dispatch(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=0.5)
    response = client.post("/openai/v1/chat/completions", json={**CHAT, "stream": True})
    error = openai_error(response, 503)
    assert "Redis" in error["message"]
    response = client.post("/v1/models/null:predict", json={"instances": ["x"], "stream": True})
    assert "Redis" in kserve_error(response, 503)
