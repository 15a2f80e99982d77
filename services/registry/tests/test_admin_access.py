"""Who may write to the registry, what a replica may register, and the
admin API for API keys; real Redis, the registry app under Flask's test
client (whose ``REMOTE_ADDR`` stands for the caller's address)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from test_registry_api import info

from infergate_common.api_keys import digest, keys_hash
from infergate_common.registry_api import changes_channel
from infergate_registry.app import create_app
from infergate_registry.settings import RegistrySettings

TOKEN = "internal-token-for-tests"
ADMIN = "admin-token-for-tests"


@pytest.fixture
def guarded(redis_url: str, prefix: str) -> FlaskClient:
    settings = RegistrySettings(
        redis_url=redis_url,
        stream_prefix=prefix,
        reap_interval_s=0,
        internal_token=TOKEN,
        admin_token=ADMIN,
        max_replica_ttl_s=30,
    )
    return create_app(settings).test_client()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(
    client: FlaskClient,
    url: str,
    remote: str = "10.0.0.5",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
    return client.post(
        "/registry/models/tiny/replicas",
        json={"url": url, "info": info(), **extra},
        headers=auth() if headers is None else headers,
        environ_base={"REMOTE_ADDR": remote},
    )


def test_writes_need_the_internal_credential_reads_do_not(guarded: FlaskClient) -> None:
    rogue = register(guarded, "http://10.0.0.5:8000", headers={})
    assert rogue.status_code == 401 and rogue.get_json()["error"]["code"] == "internal_credential"
    assert register(guarded, "http://10.0.0.5:8000", headers=auth("wrong")).status_code == 401
    assert register(guarded, "http://10.0.0.5:8000").status_code == 200
    for method, path, body in (
        ("PUT", "/registry/models/tiny/domains", {"domains": ["evil.test"]}),
        ("PUT", "/registry/models/tiny/aliases", {"aliases": ["gpt-4"]}),
        ("DELETE", "/registry/models/tiny/replicas?url=http://10.0.0.5:8000", None),
        ("DELETE", "/registry/models/tiny", None),
    ):
        assert guarded.open(path, method=method, json=body).status_code == 401, path
    assert guarded.get("/registry/models/tiny").status_code == 200
    assert guarded.get("/registry/models").status_code == 200
    assert guarded.get("/readyz").status_code == 200
    assert (
        guarded.put(
            "/registry/models/tiny/domains", json={"domains": ["ok.test"]}, headers=auth()
        ).status_code
        == 200
    )


def test_a_replica_registers_only_its_own_address(guarded: FlaskClient) -> None:
    other = register(guarded, "http://10.0.0.6:8000", remote="10.0.0.5")
    assert other.status_code == 403 and other.get_json()["error"]["param"] == "url"
    assert register(guarded, "http://10.0.0.5:8000", remote="10.0.0.5").status_code == 200
    # A name counts when it resolves to the caller's address.
    assert register(guarded, "http://localhost:8001", remote="127.0.0.1").status_code == 200
    assert register(guarded, "http://localhost:8001", remote="10.0.0.5").status_code == 403
    # IPv4-mapped IPv6 callers are their IPv4 address.
    assert register(guarded, "http://10.0.0.7:8000", remote="::ffff:10.0.0.7").status_code == 200


def test_the_address_check_can_be_switched_off(redis_url: str, prefix: str) -> None:
    settings = RegistrySettings(
        redis_url=redis_url,
        stream_prefix=prefix,
        reap_interval_s=0,
        internal_token=TOKEN,
        check_replica_address=False,
    )
    client = create_app(settings).test_client()
    assert register(client, "http://10.9.9.9:8000", remote="127.0.0.1").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",
        "http://[fe80::1]:8000",
        "http://metadata.google.internal",
        "http://0.0.0.0:8000",
        "http://224.0.0.1:8000",
        "ftp://10.0.0.5:8000",
        "file:///etc/passwd",
        "http://user:pw@10.0.0.5:8000",
        "http://10.0.0.5:8000/?x=1",
        "http://:8000",
        "http://10.0.0.5:99999",
    ],
)
def test_replica_urls_are_validated(guarded: FlaskClient, url: str) -> None:
    remote = "169.254.169.254" if "169.254" in url else "10.0.0.5"
    response = register(guarded, url, remote=remote)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["param"] == "url"


def test_ttl_is_capped(guarded: FlaskClient, redis_url: str, prefix: str) -> None:
    before = time.time()
    assert register(guarded, "http://10.0.0.5:8000", ttl_s=100_000).status_code == 200
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    expiry = client.zscore(f"{prefix}:registry:expiry", "tiny\nhttp://10.0.0.5:8000")
    client.close()
    assert expiry is not None and expiry <= time.time() + 30 and expiry >= before + 29


# ------------------------------------------------------------- admin API


@pytest.fixture
def changes(redis_url: str, prefix: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(changes_channel(prefix))
    pubsub.get_message(timeout=1)
    yield pubsub
    pubsub.close()
    client.close()


def test_the_admin_api_needs_the_admin_token(guarded: FlaskClient, redis_url: str, prefix: str) -> None:
    assert guarded.get("/admin/keys").status_code == 401
    assert guarded.get("/admin/keys", headers=auth(TOKEN)).status_code == 401
    response = guarded.post("/admin/keys", json={}, headers=auth("nope"))
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "invalid_admin_token"
    off = create_app(
        RegistrySettings(redis_url=redis_url, stream_prefix=prefix, reap_interval_s=0)
    ).test_client()
    assert off.get("/admin/keys", headers=auth(ADMIN)).status_code == 403


def test_keys_are_created_once_listed_rotated_and_revoked(
    guarded: FlaskClient, redis_url: str, prefix: str, changes: Any
) -> None:
    created = guarded.post(
        "/admin/keys",
        json={"name": "team-a", "models": ["llama-*"], "rpm": 60, "tpm": 1000, "metadata": {"team": "a"}},
        headers=auth(ADMIN),
    )
    assert created.status_code == 201
    secret, record = created.get_json()["key"], created.get_json()["record"]
    assert secret.startswith("igk-") and len(secret) > 40
    assert record["models"] == ["llama-*"] and record["rpm"] == 60 and "key_sha256" not in record
    assert changes.get_message(timeout=2)["data"].find("keys_changed") >= 0

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stored = client.hget(keys_hash(prefix), record["id"])
    assert stored is not None and digest(secret) in stored and secret not in stored

    listed = guarded.get("/admin/keys", headers=auth(ADMIN)).get_json()["keys"]
    assert [k["id"] for k in listed] == [record["id"]]
    assert secret not in str(listed) and digest(secret) not in str(listed)
    assert guarded.get(f"/admin/keys/{record['id']}", headers=auth(ADMIN)).get_json()["name"] == "team-a"

    rotated = guarded.post(f"/admin/keys/{record['id']}/rotate", headers=auth(ADMIN))
    assert rotated.status_code == 200
    new_secret = rotated.get_json()["key"]
    assert new_secret != secret and rotated.get_json()["record"]["id"] == record["id"]
    stored = client.hget(keys_hash(prefix), record["id"])
    assert stored is not None and digest(new_secret) in stored and digest(secret) not in stored
    assert rotated.get_json()["record"]["rpm"] == 60

    assert guarded.delete(f"/admin/keys/{record['id']}", headers=auth(ADMIN)).get_json() == {
        "revoked": record["id"]
    }
    assert client.hget(keys_hash(prefix), record["id"]) is None
    assert guarded.delete(f"/admin/keys/{record['id']}", headers=auth(ADMIN)).status_code == 404
    client.close()


def test_a_bad_key_spec_is_400(guarded: FlaskClient) -> None:
    assert guarded.post("/admin/keys", json={"rpm": -1}, headers=auth(ADMIN)).status_code == 400
    assert guarded.post("/admin/keys", json={"models": [""]}, headers=auth(ADMIN)).status_code == 400
    assert guarded.post("/admin/keys", json={"colour": "red"}, headers=auth(ADMIN)).status_code == 400
