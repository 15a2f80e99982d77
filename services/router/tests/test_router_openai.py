"""OpenAI payload shapes, checked against golden files (ids and times
normalised), and the translation details: n choices, batched prompts,
token prompts, base64 embeddings, model listing, aliases and domains."""

from __future__ import annotations

import base64
import struct
import uuid
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from payloads import assert_golden, sse_payloads
from registry_records import register, set_aliases, set_domains
from router_processes import Stack

CHAT = {"model": "null", "messages": [{"role": "user", "content": "hi there"}]}


def test_completion_shape(client: FlaskClient) -> None:
    response = client.post(
        "/openai/v1/completions", json={"model": "null", "prompt": "a b c", "max_tokens": 3}
    )
    assert response.status_code == 200
    assert_golden("completion", response.get_json())


def test_completion_default_max_tokens_is_16_and_null_means_context(client: FlaskClient) -> None:
    body = client.post("/openai/v1/completions", json={"model": "null", "prompt": "x"}).get_json()
    assert body["choices"][0]["finish_reason"] == "stop"  # the null worker stops at 8 < 16
    body = client.post(
        "/openai/v1/completions", json={"model": "null", "prompt": "x", "max_tokens": None}
    ).get_json()
    assert body["usage"]["completion_tokens"] == 8


def test_completion_batched_prompts_and_n(client: FlaskClient) -> None:
    body = {"model": "null", "prompt": ["one", "two three"], "n": 2, "max_tokens": 2}
    payload = client.post("/openai/v1/completions", json=body).get_json()
    assert [c["index"] for c in payload["choices"]] == [0, 1, 2, 3]
    assert payload["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
    body = {"model": "null", "prompt": [[1, 2, 3], [4]], "max_tokens": 1}
    payload = client.post("/openai/v1/completions", json=body).get_json()
    assert [c["index"] for c in payload["choices"]] == [0, 1]
    assert payload["usage"]["prompt_tokens"] == 4
    mixed = {"model": "null", "prompt": ["one", [1, 2]]}
    assert client.post("/openai/v1/completions", json=mixed).status_code == 400


def test_completion_token_prompt(client: FlaskClient) -> None:
    payload = client.post("/openai/v1/completions", json={"model": "null", "prompt": [5, 6, 7, 8]}).get_json()
    assert payload["usage"]["prompt_tokens"] == 4


def test_chat_shape(client: FlaskClient) -> None:
    response = client.post("/openai/v1/chat/completions", json={**CHAT, "n": 2, "max_completion_tokens": 2})
    assert response.status_code == 200
    assert_golden("chat_completion", response.get_json())


def test_chat_stream_shape(client: FlaskClient) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 3, "stream_options": {"include_usage": True}}
    response = client.post("/openai/v1/chat/completions", json=body)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert_golden("chat_completion_stream", sse_payloads(response.get_data(as_text=True)))


def test_completion_stream_shape_without_usage(client: FlaskClient) -> None:
    body = {"model": "null", "prompt": "x", "stream": True, "max_tokens": 2}
    payloads = sse_payloads(client.post("/openai/v1/completions", json=body).get_data(as_text=True))
    assert_golden("completion_stream", payloads)
    assert all("usage" not in p for p in payloads[:-1])


def test_batched_completion_stream_merges_prompts(client: FlaskClient) -> None:
    body = {"model": "null", "prompt": ["a", "b", "c"], "stream": True, "max_tokens": 3, "n": 2}
    payloads = sse_payloads(client.post("/openai/v1/completions", json=body).get_data(as_text=True))
    assert payloads[-1] == "[DONE]"
    by_index: dict[int, str] = {}
    finishes: dict[int, list[Any]] = {}
    for chunk in payloads[:-1]:
        for choice in chunk["choices"]:
            by_index[choice["index"]] = by_index.get(choice["index"], "") + choice["text"]
            finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    assert sorted(by_index) == list(range(6))
    assert set(by_index.values()) == {"tok0 tok1 tok2 "}
    assert all(f[-1] == "length" and set(f[:-1]) <= {None} for f in finishes.values())


def test_embeddings_float_and_base64(client: FlaskClient) -> None:
    payload = client.post(
        "/openai/v1/embeddings", json={"model": "embed", "input": "one two three"}
    ).get_json()
    assert_golden("embeddings", payload)
    assert payload["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    encoded = client.post(
        "/openai/v1/embeddings", json={"model": "embed", "input": ["a", "b"], "encoding_format": "base64"}
    ).get_json()
    raw = base64.b64decode(encoded["data"][1]["embedding"])
    values = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert values == pytest.approx(payload["data"][0]["embedding"], rel=1e-6)


def test_embeddings_token_input_and_dimensions(client: FlaskClient) -> None:
    payload = client.post(
        "/openai/v1/embeddings", json={"model": "embed", "input": [[1, 2], [3]], "dimensions": 4}
    ).get_json()
    assert [len(d["embedding"]) for d in payload["data"]] == [4, 4]
    assert payload["usage"]["prompt_tokens"] == 3


def test_models_list_shape(client: FlaskClient) -> None:
    payload = client.get("/openai/v1/models").get_json()
    assert payload["object"] == "list"
    cards = {card["id"]: card for card in payload["data"]}
    assert cards["null"]["task"] == "text_generation"
    assert cards["null"]["backend"] == "null"
    assert cards["embed"]["task"] == "text_embedding"
    assert cards["null"]["max_model_len"] == 4096
    assert {"id", "object", "created", "owned_by", "backend_reason"} <= set(cards["null"])
    assert client.get("/openai/v1/models/null").get_json()["id"] == "null"


def test_alias_resolves_to_the_model(client: FlaskClient, stack: Stack) -> None:
    name = f"aliased-{uuid.uuid4().hex[:6]}"
    stack.start_null_worker(name, tokens=1)
    set_aliases(stack.registry_url, name, [f"{name}-alias"])
    response = client.post("/openai/v1/chat/completions", json={**CHAT, "model": f"{name}-alias"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["model"] == name


def test_domains_and_restricted_models(client: FlaskClient, stack: Stack) -> None:
    name = f"dom{uuid.uuid4().hex[:6]}"
    register(stack.registry_url, name, "http://127.0.0.1:9")
    set_domains(stack.registry_url, name, ["example.com"], ["api.corp.test"], restricted=True)
    own = {"Host": f"{name}.example.com:8080"}
    names = [card["id"] for card in client.get("/openai/v1/models", headers=own).get_json()["data"]]
    assert names == [name]
    assert [
        c["id"] for c in client.get("/openai/v1/models", headers={"Host": "API.corp.test"}).get_json()["data"]
    ] == [name]
    # On its own host only that model answers; elsewhere a restricted model is invisible.
    assert client.post("/openai/v1/chat/completions", json=CHAT, headers=own).status_code == 404
    everyone = [c["id"] for c in client.get("/openai/v1/models").get_json()["data"]]
    assert name not in everyone and "null" in everyone
    assert client.get(f"/v1/models/{name}").status_code == 404


def test_registry_change_message_drops_the_cache(stack: Stack) -> None:
    import time

    from conftest import router_settings

    from infergate_common.registry_api import changes_channel
    from infergate_router.app import create_app
    from infergate_router.services import EXTENSION

    channel = changes_channel(stack.prefix)
    pubsub_client = redis.Redis.from_url(stack.redis_url)
    subscribers_before = dict(pubsub_client.pubsub_numsub(channel))[channel.encode()]
    app = create_app(router_settings(stack, registry_cache_ttl_s=600))
    try:
        client = app.test_client()
        client.get("/openai/v1/models")
        # The listener subscribes (and drops the cache once) in the background.
        deadline = time.monotonic() + 5
        while dict(pubsub_client.pubsub_numsub(channel))[channel.encode()] <= subscribers_before:
            assert time.monotonic() < deadline, "the change listener never subscribed"
            time.sleep(0.02)
        before = {c["id"] for c in client.get("/openai/v1/models").get_json()["data"]}
        name = f"late-{uuid.uuid4().hex[:6]}"
        assert name not in before
        register(stack.registry_url, name, "http://127.0.0.1:9")
        deadline = time.monotonic() + 3
        while name not in {c["id"] for c in client.get("/openai/v1/models").get_json()["data"]}:
            assert time.monotonic() < deadline, "the change message did not drop the cache"
            time.sleep(0.05)
    finally:
        app.extensions[EXTENSION].close()
        pubsub_client.close()
