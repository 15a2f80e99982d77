"""The registry's routes against a real redis-server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from infergate_common.registry_api import ModelList, ModelRecord, changes_channel
from infergate_common.worker_api import Backend, Task, WorkerInfo
from infergate_registry.app import create_app
from infergate_registry.settings import RegistrySettings


def info(name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": name,
        "model_id": "/models/tiny-llama",
        "task": Task.TEXT_GENERATION,
        "backend": Backend.HUGGINGFACE,
        "backend_reason": "forced",
        "architecture": "LlamaForCausalLM",
        "dtype": "float32",
        "device": "cpu",
        "max_model_len": 512,
        "chat_template": True,
    }
    fields.update(overrides)
    return WorkerInfo(**fields).model_dump(mode="json")


def body(response: Any) -> Any:
    """The JSON of a test-client response (never None for the registry's answers)."""
    data = response.get_json()
    assert data is not None
    return data


def register(client: FlaskClient, name: str = "tiny", url: str = "http://127.0.0.1:9001", **body: Any) -> Any:
    payload = {"url": url, "info": info(name, **body.pop("info", {})), **body}
    return client.post(f"/registry/models/{name}/replicas", json=payload)


class Changes:
    """Collects the registry's change messages on a prefix's channel."""

    def __init__(self, redis_client: redis.Redis, prefix: str) -> None:
        self.pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(changes_channel(prefix))
        self.pubsub.get_message(timeout=1)

    def drain(self, wait_s: float = 0.3) -> list[tuple[str, str]]:
        seen = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None:
                body = json.loads(message["data"])
                seen.append((body["model"], body["change"]))
        return seen


@pytest.fixture
def changes(redis_client: redis.Redis, prefix: str) -> Iterator[Changes]:
    collector = Changes(redis_client, prefix)
    yield collector
    collector.pubsub.close()


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"ready": True}


def test_registration_creates_the_model_from_worker_info(client: FlaskClient) -> None:
    response = register(client, domains=["example.com"], hosts=["chat.corp"], restricted=True)
    assert response.status_code == 200
    record = ModelRecord.model_validate(response.json)
    assert record.name == "tiny"
    assert record.model_id == "/models/tiny-llama"
    assert record.task is Task.TEXT_GENERATION
    assert record.backend is Backend.HUGGINGFACE
    assert record.backend_reason == "forced"
    assert record.architecture == "LlamaForCausalLM"
    assert record.max_model_len == 512
    assert record.chat_template is True
    assert record.domains == ["example.com"]
    assert record.hosts == ["chat.corp"]
    assert record.restricted is True
    assert record.host_names() == {"tiny.example.com", "chat.corp"}
    assert record.created > 0
    assert [r.url for r in record.replicas] == ["http://127.0.0.1:9001"]
    assert record.replicas[0].ready is True
    assert record.replicas[0].info is not None

    fetched = client.get("/registry/models/tiny")
    assert fetched.status_code == 200
    assert ModelRecord.model_validate(fetched.json) == record


def test_list_holds_every_model_sorted(client: FlaskClient) -> None:
    register(client, "b-model", "http://127.0.0.1:9002")
    register(client, "a-model", "http://127.0.0.1:9001", info={"task": Task.TEXT_EMBEDDING})
    listing = ModelList.model_validate(client.get("/registry/models").json)
    assert [m.name for m in listing.models] == ["a-model", "b-model"]
    assert listing.models[0].task is Task.TEXT_EMBEDDING


def test_empty_listing(client: FlaskClient) -> None:
    assert client.get("/registry/models").json == {"models": []}


def test_unknown_model_is_404_in_the_error_shape(client: FlaskClient) -> None:
    response = client.get("/registry/models/nope")
    assert response.status_code == 404
    error = body(response)["error"]
    assert error["code"] == "model_not_found"
    assert error["status"] == 404
    assert "nope" in error["message"]


@pytest.mark.parametrize(
    "payload",
    [
        {"url": "http://x"},
        {"url": "http://x", "info": {"name": "tiny"}},
        {"url": "http://x", "info": info(), "ttl_s": 0},
        {"url": "http://x", "info": info(), "ttl_s": "soon"},
    ],
)
def test_malformed_registration_is_400(client: FlaskClient, payload: dict[str, Any]) -> None:
    response = client.post("/registry/models/tiny/replicas", json=payload)
    assert response.status_code == 400
    assert body(response)["error"]["type"] == "invalid_request_error"


def test_non_json_body_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/registry/models/tiny/replicas", data="{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert body(response)["error"]["status"] == 400


def test_registration_under_another_name_is_refused(client: FlaskClient) -> None:
    response = client.post("/registry/models/other/replicas", json={"url": "http://x", "info": info("tiny")})
    assert response.status_code == 400
    assert body(response)["error"]["param"] == "info.name"


@pytest.mark.parametrize("name", ["bad name", "has:colon", "-leading-dash"])
def test_invalid_model_name_is_refused(client: FlaskClient, name: str) -> None:
    response = register(client, name)
    assert response.status_code == 400


def test_unknown_route_and_method(client: FlaskClient) -> None:
    assert client.get("/registry/nothing").status_code == 404
    response = client.patch("/registry/models")
    assert response.status_code == 405
    assert body(response)["error"]["status"] == 405


def test_heartbeat_renews_and_keeps_one_replica(client: FlaskClient) -> None:
    first = ModelRecord.model_validate(register(client).json)
    time.sleep(0.02)
    second = ModelRecord.model_validate(register(client).json)
    assert len(second.replicas) == 1
    assert second.replicas[0].last_seen > first.replicas[0].last_seen
    assert second.created == first.created


def test_replicas_of_one_model_are_listed_together(client: FlaskClient) -> None:
    register(client, url="http://127.0.0.1:9001")
    record = ModelRecord.model_validate(register(client, url="http://127.0.0.1:9002").json)
    assert [r.url for r in record.replicas] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]


def test_replica_that_stops_heartbeating_leaves_rotation(client: FlaskClient) -> None:
    register(client, url="http://127.0.0.1:9001", ttl_s=0.3)
    register(client, url="http://127.0.0.1:9002", ttl_s=30)
    deadline = time.monotonic() + 5
    while True:
        record = ModelRecord.model_validate(client.get("/registry/models/tiny").json)
        if [r.url for r in record.replicas] == ["http://127.0.0.1:9002"]:
            break
        assert time.monotonic() < deadline, record.replicas
        time.sleep(0.02)
    listing = ModelList.model_validate(client.get("/registry/models").json)
    assert [r.url for r in listing.models[0].replicas] == ["http://127.0.0.1:9002"]


def test_not_ready_replica_is_listed_as_not_ready(client: FlaskClient) -> None:
    record = ModelRecord.model_validate(register(client, ready=False).json)
    assert record.replicas[0].ready is False


def test_deregister_removes_the_replica(client: FlaskClient, changes: Changes) -> None:
    register(client, url="http://127.0.0.1:9001")
    register(client, url="http://127.0.0.1:9002")
    changes.drain()
    response = client.delete("/registry/models/tiny/replicas", query_string={"url": "http://127.0.0.1:9001"})
    assert response.status_code == 200
    assert [r["url"] for r in body(response)["replicas"]] == ["http://127.0.0.1:9002"]
    assert changes.drain() == [("tiny", "replica_removed")]
    again = client.delete("/registry/models/tiny/replicas", query_string={"url": "http://127.0.0.1:9001"})
    assert again.status_code == 404


def test_deregister_needs_a_url(client: FlaskClient) -> None:
    register(client)
    response = client.delete("/registry/models/tiny/replicas")
    assert response.status_code == 400
    assert body(response)["error"]["param"] == "url"


def test_delete_model(client: FlaskClient, changes: Changes) -> None:
    register(client)
    changes.drain()
    assert client.delete("/registry/models/tiny").json == {"deleted": "tiny"}
    assert changes.drain() == [("tiny", "model_deleted")]
    assert client.get("/registry/models/tiny").status_code == 404
    assert client.get("/registry/models").json == {"models": []}
    assert client.delete("/registry/models/tiny").status_code == 404


def test_set_domains(client: FlaskClient, changes: Changes) -> None:
    register(client)
    changes.drain()
    response = client.put(
        "/registry/models/tiny/domains",
        json={"domains": ["Example.com", "internal.corp"], "hosts": ["chat.example.org"], "restricted": True},
    )
    assert response.status_code == 200
    record = ModelRecord.model_validate(response.json)
    assert record.domains == ["example.com", "internal.corp"]
    assert record.restricted is True
    assert record.host_names() == {"tiny.example.com", "tiny.internal.corp", "chat.example.org"}
    assert changes.drain() == [("tiny", "domains_updated")]
    # A heartbeat without domains of its own keeps what was set.
    after = ModelRecord.model_validate(register(client).json)
    assert after.domains == ["example.com", "internal.corp"]
    assert after.restricted is True
    assert changes.drain() == []


def test_invalid_domain_is_400(client: FlaskClient) -> None:
    register(client)
    response = client.put("/registry/models/tiny/domains", json={"domains": ["not a domain"]})
    assert response.status_code == 400
    assert body(response)["error"]["param"] == "domains"


def test_domains_of_unknown_model_is_404(client: FlaskClient) -> None:
    response = client.put("/registry/models/nope/domains", json={"domains": ["example.com"]})
    assert response.status_code == 404


def test_set_aliases(client: FlaskClient, changes: Changes) -> None:
    register(client)
    changes.drain()
    response = client.put("/registry/models/tiny/aliases", json={"aliases": ["small", "gpt-tiny", "small"]})
    assert response.status_code == 200
    assert body(response)["aliases"] == ["small", "gpt-tiny"]
    assert changes.drain() == [("tiny", "aliases_updated")]
    # Setting the same aliases again changes nothing and announces nothing.
    client.put("/registry/models/tiny/aliases", json={"aliases": ["small", "gpt-tiny"]})
    assert changes.drain() == []


def test_alias_may_not_name_another_model(client: FlaskClient) -> None:
    register(client, "tiny")
    register(client, "other", "http://127.0.0.1:9009")
    response = client.put("/registry/models/tiny/aliases", json={"aliases": ["other"]})
    assert response.status_code == 400
    assert "other" in body(response)["error"]["message"]


def test_routing_policy_by_route_and_by_worker_flag(client: FlaskClient, changes: Changes) -> None:
    assert body(register(client))["routing_policy"] == "fewest_in_flight"
    changes.drain()
    response = client.put("/registry/models/tiny/routing", json={"routing_policy": "prefix_aware"})
    assert response.status_code == 200
    assert body(response)["routing_policy"] == "prefix_aware"
    assert changes.drain() == [("tiny", "routing_updated")]
    # A heartbeat without the flag leaves it; a worker started with the flag sets it.
    assert body(register(client))["routing_policy"] == "prefix_aware"
    assert body(register(client, routing_policy="session_affinity"))["routing_policy"] == "session_affinity"
    bad = client.put("/registry/models/tiny/routing", json={"routing_policy": "round_robin"})
    assert bad.status_code == 400
    missing = client.put("/registry/models/nope/routing", json={"routing_policy": "prefix_aware"})
    assert missing.status_code == 404


def test_worker_aliases_are_kept(client: FlaskClient) -> None:
    record = ModelRecord.model_validate(register(client, info={"aliases": ["tiny-chat"]}).json)
    assert record.aliases == ["tiny-chat"]


def test_changes_are_published_for_new_models_and_replicas_only(
    client: FlaskClient, changes: Changes
) -> None:
    register(client, url="http://127.0.0.1:9001")
    assert changes.drain() == [("tiny", "model_created"), ("tiny", "replica_added")]
    register(client, url="http://127.0.0.1:9001")
    assert changes.drain() == []
    register(client, url="http://127.0.0.1:9002")
    assert changes.drain() == [("tiny", "replica_added")]
    register(client, url="http://127.0.0.1:9002", ready=False)
    assert changes.drain() == [("tiny", "replica_updated")]
    register(client, url="http://127.0.0.1:9002", info={"max_model_len": 1024})
    assert changes.drain() == [("tiny", "model_updated"), ("tiny", "replica_updated")]


def test_redis_down_is_503(redis_url: str, prefix: str) -> None:
    # A port nothing listens on: every call fails to connect.
    from harness.ports import free_port

    dead = create_app(RegistrySettings(redis_url=f"redis://127.0.0.1:{free_port()}/0", reap_interval_s=0))
    client = dead.test_client()
    response = client.get("/registry/models")
    assert response.status_code == 503
    assert body(response)["error"]["type"] == "service_unavailable_error"
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
