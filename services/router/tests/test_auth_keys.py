"""API keys at the router: the three sources, lookup by digest, scopes,
401s in each protocol's shape, stream ownership. Real Redis, the real
registry and null-engine workers (the session ``stack``), the router app
under Flask's test client."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from conftest import router_settings
from flask import Flask
from flask.testing import FlaskClient
from router_processes import Stack, free_port

from infergate_common.api_keys import ApiKeyRecord, KeySpec, digest, keys_hash, make_record
from infergate_common.registry_api import ChangeMessage, changes_channel
from infergate_router.app import create_app
from infergate_router.auth.keystore import KeysFile, parse_keys_file
from infergate_router.services import EXTENSION


@pytest.fixture
def make_app(stack: Stack) -> Iterator:  # type: ignore[type-arg]
    apps: list[Flask] = []

    def make(**overrides: object) -> FlaskClient:
        app = create_app(router_settings(stack, **overrides))
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions[EXTENSION].close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(model: str = "null") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def write_keys(path: Path, entries: list[dict[str, object]]) -> None:
    # A new file in place, as a Secret volume update does (new inode, new mtime).
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": entries}))
    tmp.replace(path)


def test_a_keys_file_entry_may_give_the_key_or_its_digest() -> None:
    records = parse_keys_file(
        json.dumps(
            [
                {"key": "plain-one", "models": ["a"]},
                {"id": "team-b", "key_sha256": digest("plain-two").upper(), "rpm": 5},
            ]
        )
    )
    assert [r.key_sha256 for r in records] == [digest("plain-one"), digest("plain-two")]
    assert records[1].id == "team-b" and records[1].rpm == 5
    assert "plain-one" not in records[0].model_dump_json()
    with pytest.raises(ValueError, match="neither key_sha256 nor key"):
        parse_keys_file('[{"name": "x"}]')
    with pytest.raises(ValueError, match=r"keys\[0\]\.rpm"):
        parse_keys_file('[{"key": "k", "rpm": -1}]')


def test_the_keys_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_keys(path, [{"key": "first"}])
    keys = KeysFile(str(path))
    assert digest("first") in keys.index()
    write_keys(path, [{"key": "second"}])
    deadline = time.monotonic() + 5
    while digest("second") not in keys.index():
        assert time.monotonic() < deadline, "the changed file was not read again"
        time.sleep(0.05)
    assert digest("first") not in keys.index()
    # A broken file keeps the keys read before.
    path.write_text("{not json")
    time.sleep(1.1)
    assert digest("second") in keys.index()


def test_router_with_a_keys_file_requires_keys_and_rereads_them(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys.json"
    write_keys(path, [{"key": "file-key-1", "id": "file-one"}])
    client = make_app(api_keys_file=str(path))
    assert (
        client.post("/openai/v1/chat/completions", json=chat(), headers=bearer("file-key-1")).status_code
        == 200
    )
    missing = client.post("/openai/v1/chat/completions", json=chat())
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert missing.json["error"]["code"] == "invalid_api_key"
    write_keys(path, [{"key": "file-key-2", "id": "file-two"}])
    deadline = time.monotonic() + 5
    while (
        client.post("/openai/v1/chat/completions", json=chat(), headers=bearer("file-key-2")).status_code
        != 200
    ):
        assert time.monotonic() < deadline, "the new key was not accepted without a restart"
        time.sleep(0.1)
    assert (
        client.post("/openai/v1/chat/completions", json=chat(), headers=bearer("file-key-1")).status_code
        == 401
    )


def test_401_in_each_protocol_shape(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app(api_keys=["static-key"])
    openai = client.post(
        "/openai/v1/completions", json={"model": "null", "prompt": "x"}, headers=bearer("wrong")
    )
    assert openai.status_code == 401 and openai.json["error"]["type"] == "authentication_error"
    v1 = client.post("/v1/models/null:predict", json={"instances": ["x"]})
    assert v1.status_code == 401 and isinstance(v1.json["error"], str)
    v2 = client.get("/v2/models/null")
    assert v2.status_code == 401 and isinstance(v2.json["error"], str)
    for response in (openai, v1, v2):
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="infergate"'
    # Probes stay open.
    assert client.get("/").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v1/models", headers=bearer("static-key")).status_code == 200


def admin_key(stack: Stack, spec: KeySpec) -> tuple[str, ApiKeyRecord]:
    """A key stored as the registry's admin API stores it, announced the same way."""
    secret, record = make_record(spec)
    client = redis.Redis.from_url(stack.redis_url)
    client.hset(keys_hash(stack.prefix), record.id, record.model_dump_json())
    client.publish(
        changes_channel(stack.prefix), ChangeMessage(model="", change="keys_changed").model_dump_json()
    )
    client.close()
    return secret, record


def test_scopes_hide_other_models_exactly_as_unknown_ones(make_app, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    client = make_app(require_api_key=True)
    only_embed, _ = admin_key(stack, KeySpec(models=["emb*"]))
    headers = bearer(only_embed)
    listed = client.get("/openai/v1/models", headers=headers).json["data"]
    assert [m["id"] for m in listed] == ["embed"]
    assert client.get("/v1/models", headers=headers).json == {"models": ["embed"]}
    # The hidden model and a model that does not exist answer alike, in every protocol.
    for path, body in (
        ("/openai/v1/chat/completions", chat("{m}")),
        ("/v1/models/{m}:predict", {"instances": ["x"]}),
        (
            "/v2/models/{m}/infer",
            {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
        ),
    ):
        hidden = client.post(
            path.format(m="null"), json=json.loads(json.dumps(body).replace("{m}", "null")), headers=headers
        )
        unknown = client.post(
            path.format(m="nothing"),
            json=json.loads(json.dumps(body).replace("{m}", "nothing")),
            headers=headers,
        )
        assert hidden.status_code == unknown.status_code == 404
        assert hidden.get_data(as_text=True).replace("null", "M") == unknown.get_data(as_text=True).replace(
            "nothing", "M"
        )
    assert client.get("/openai/v1/models/null", headers=headers).status_code == 404
    assert client.get("/v2/models/null/ready", headers=headers).status_code == 404
    assert (
        client.post(
            "/openai/v1/embeddings", json={"model": "embed", "input": "x"}, headers=headers
        ).status_code
        == 200
    )


def test_a_revoked_or_expired_admin_key_stops_working(make_app, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    client = make_app(require_api_key=True, key_cache_ttl_s=60)
    secret, _ = admin_key(stack, KeySpec(expires_at=time.time() + 1.5))
    assert client.post("/openai/v1/chat/completions", json=chat(), headers=bearer(secret)).status_code == 200
    deadline = time.monotonic() + 5
    while client.post("/openai/v1/chat/completions", json=chat(), headers=bearer(secret)).status_code != 401:
        assert time.monotonic() < deadline, "the key did not expire"
        time.sleep(0.1)
    other, other_record = admin_key(stack, KeySpec())
    created_at = time.monotonic()
    while client.post("/openai/v1/chat/completions", json=chat(), headers=bearer(other)).status_code != 200:
        assert time.monotonic() - created_at < 1.0, "a new key took more than a second to work"
        time.sleep(0.02)
    redis_client = redis.Redis.from_url(stack.redis_url)
    redis_client.hdel(keys_hash(stack.prefix), other_record.id)
    redis_client.publish(
        changes_channel(stack.prefix), ChangeMessage(model="", change="keys_changed").model_dump_json()
    )
    redis_client.close()
    revoked_at = time.monotonic()
    # The change message drops the cache (its TTL here is a minute).
    while client.post("/openai/v1/chat/completions", json=chat(), headers=bearer(other)).status_code != 401:
        assert time.monotonic() - revoked_at < 1.0, "revocation took more than a second"
        time.sleep(0.02)


def test_without_required_keys_an_unknown_key_is_anonymous(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app()
    # The OpenAI SDK always sends a key; "unused" is what the README tells people to send.
    assert (
        client.post("/openai/v1/chat/completions", json=chat(), headers=bearer("unused")).status_code == 200
    )
    assert client.post("/openai/v1/chat/completions", json=chat()).status_code == 200


def test_streams_belong_to_the_key_that_opened_them(make_app, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    client = make_app(require_api_key=True)
    alice, _ = admin_key(stack, KeySpec(name="alice"))
    bob, _ = admin_key(stack, KeySpec(name="bob"))
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    body = {**chat(), "stream": True}
    first = client.post(
        "/openai/v1/chat/completions", json=body, headers={**bearer(alice), "X-Request-Id": shared}
    )
    assert first.status_code == 200 and first.headers["X-Request-Id"] == shared
    first_events = first.get_data(as_text=True)
    assert "[DONE]" in first_events
    # Bob cannot resume or replay Alice's stream: for him it does not exist.
    resume = client.post(
        "/openai/v1/chat/completions",
        json=body,
        headers={**bearer(bob), "X-Request-Id": shared, "Last-Event-ID": "0-0"},
    )
    assert resume.status_code == 404
    assert client.get(f"/openai/v1/streams/{shared}", headers=bearer(bob)).status_code == 404
    # The same id names Bob's own stream, with no collision (no 409).
    own = client.post(
        "/openai/v1/chat/completions", json=body, headers={**bearer(bob), "X-Request-Id": shared}
    )
    assert own.status_code == 200 and "[DONE]" in own.get_data(as_text=True)
    # An internal (namespaced) id cannot be given from outside.
    internal_ids = {
        line.split('"id":"')[1].split('"')[0] for line in first_events.splitlines() if '"id":"' in line
    }
    for internal in internal_ids:
        name = internal.removeprefix("chatcmpl-")
        assert client.get(f"/openai/v1/streams/{name}", headers=bearer(bob)).status_code == 404
    # Alice replays her own.
    replay = client.get(f"/openai/v1/streams/{shared}", headers=bearer(alice))
    assert replay.status_code == 200 and "[DONE]" in replay.get_data(as_text=True)


def test_worker_failures_reach_the_client_without_their_text(make_app, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    client = make_app()
    # A registered replica whose address refuses connections: the router's
    # message must not carry that address.
    dead = "http://127.0.0.1:9"
    info = requests.get(f"{stack.registry_url}/registry/models/null", timeout=5).json()["replicas"][0]["info"]
    info = {**info, "name": "gone"}
    registered = requests.post(
        f"{stack.registry_url}/registry/models/gone/replicas",
        json={"url": dead, "info": info, "ttl_s": 30},
        timeout=5,
    )
    assert registered.status_code == 200, registered.text
    try:
        response = client.post("/openai/v1/chat/completions", json=chat("gone"))
        assert response.status_code == 503
        message = response.json["error"]["message"]
        assert "127.0.0.1" not in message and ":9" not in message
        assert f"request id {response.headers['X-Request-Id']}" in message
    finally:
        requests.delete(f"{stack.registry_url}/registry/models/gone", timeout=5)


def test_key_store_unreachable_is_503_only_where_keys_are_required(make_app) -> None:  # type: ignore[no-untyped-def]
    dead = f"redis://127.0.0.1:{free_port()}/0"
    optional = make_app(redis_url=dead)
    assert (
        optional.post("/openai/v1/chat/completions", json=chat(), headers=bearer("unused")).status_code == 200
    )
    required = make_app(redis_url=dead, require_api_key=True)
    response = required.post("/openai/v1/chat/completions", json=chat(), headers=bearer("igk-some-key"))
    assert response.status_code == 503
    assert (
        "request id" in response.json["error"]["message"]
        and "127.0.0.1" not in response.json["error"]["message"]
    )
