"""Replicas that stop heartbeating: swept out and announced."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from infergate_common.registry_api import DomainsUpdate, ReplicaRegistration, changes_channel
from infergate_common.worker_api import Backend, Task, WorkerInfo
from infergate_registry.app import create_app
from infergate_registry.settings import RegistrySettings
from infergate_registry.store import RegistryStore


def registration(url: str, ttl_s: float, name: str = "tiny") -> ReplicaRegistration:
    info = WorkerInfo(
        name=name,
        model_id="m",
        task=Task.TEXT_GENERATION,
        backend=Backend.HUGGINGFACE,
        dtype="float32",
        device="cpu",
    )
    return ReplicaRegistration(url=url, info=info, ttl_s=ttl_s)


class FakeClock:
    """Time under the test's control, so expiry is checked without sleeping."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_reap_removes_only_expired_replicas_and_announces_them(
    redis_client: redis.Redis, prefix: str
) -> None:
    clock = FakeClock()
    store = RegistryStore(redis_client, prefix, clock=clock)
    store.register("tiny", registration("http://a", ttl_s=2))
    store.register("tiny", registration("http://b", ttl_s=10))
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(changes_channel(prefix))
    pubsub.get_message(timeout=1)

    clock.now += 1
    assert store.reap_expired() == []
    clock.now += 1.5
    assert store.reap_expired() == [("tiny", "http://a")]
    assert store.reap_expired() == []
    message = pubsub.get_message(timeout=1)
    assert message is not None
    assert json.loads(message["data"]) == {"model": "tiny", "change": "replica_expired"}
    assert [r.url for r in store.get("tiny").replicas] == ["http://b"]
    assert redis_client.hkeys(f"{prefix}:registry:replicas:tiny") == ["http://b"]
    pubsub.close()


def test_heartbeat_in_time_keeps_the_replica(redis_client: redis.Redis, prefix: str) -> None:
    clock = FakeClock()
    store = RegistryStore(redis_client, prefix, clock=clock)
    store.register("tiny", registration("http://a", ttl_s=2))
    for _ in range(5):
        clock.now += 1.5
        store.register("tiny", registration("http://a", ttl_s=2))
        assert store.reap_expired() == []
    assert [r.url for r in store.get("tiny").replicas] == ["http://a"]


def test_expired_replica_coming_back_is_announced_as_added(redis_client: redis.Redis, prefix: str) -> None:
    clock = FakeClock()
    store = RegistryStore(redis_client, prefix, clock=clock)
    store.register("tiny", registration("http://a", ttl_s=1))
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(changes_channel(prefix))
    pubsub.get_message(timeout=1)
    clock.now += 5
    assert store.get("tiny").replicas == []
    store.register("tiny", registration("http://a", ttl_s=1))
    message = pubsub.get_message(timeout=1)
    assert message is not None
    assert json.loads(message["data"])["change"] == "replica_added"
    pubsub.close()


def test_the_app_sweeps_in_the_background(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    settings = RegistrySettings(
        redis_url=redis_url, stream_prefix=prefix, reap_interval_s=0.1, check_replica_address=False
    )
    app = create_app(settings)
    try:
        pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(changes_channel(prefix))
        pubsub.get_message(timeout=1)
        client = app.test_client()
        body = registration("http://a", ttl_s=0.3).model_dump(mode="json")
        assert client.post("/registry/models/tiny/replicas", json=body).status_code == 200
        started = time.monotonic()
        seen = []
        while time.monotonic() - started < 3:
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                seen.append(json.loads(message["data"])["change"])
                if seen[-1] == "replica_expired":
                    break
        assert seen == ["model_created", "replica_added", "replica_expired"]
        # Expired within its lease plus one sweep.
        assert time.monotonic() - started < 1.0
        pubsub.close()
    finally:
        app.extensions["infergate_reaper"].stop()


def test_concurrent_writers_lose_nothing(redis_client: redis.Redis, prefix: str) -> None:
    """Heartbeats of many replicas racing with a domains update: every replica
    and the update survive."""
    store = RegistryStore(redis_client, prefix)
    store.register("tiny", registration("http://seed", ttl_s=30))

    def heartbeat(i: int) -> None:
        for _ in range(5):
            store.register("tiny", registration(f"http://replica-{i}", ttl_s=30))

    with ThreadPoolExecutor(max_workers=9) as pool:
        futures = [pool.submit(heartbeat, i) for i in range(8)]
        futures.append(pool.submit(store.set_domains, "tiny", DomainsUpdate(domains=["example.com"])))
        for future in futures:
            future.result()
    record = store.get("tiny")
    assert record.domains == ["example.com"]
    assert len(record.replicas) == 9


def _changes(pubsub: redis.client.PubSub) -> list[dict[str, str]]:
    out = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        out.append(json.loads(message["data"]))
    return out


def test_a_heartbeat_that_changes_nothing_publishes_nothing(redis_client: redis.Redis, prefix: str) -> None:
    clock = FakeClock()
    store = RegistryStore(redis_client, prefix, clock=clock)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(changes_channel(prefix))
    pubsub.get_message(timeout=1)
    beat = registration("http://a", ttl_s=5)
    store.register("tiny", beat)
    assert [c["change"] for c in _changes(pubsub)] == ["model_created", "replica_added"]
    for load in range(3):
        clock.now += 1
        # Figures in ``extra`` (queue lengths) change on every beat.
        beat.info.extra = {"running": load, "waiting": 2 * load}
        store.register("tiny", beat)
    assert _changes(pubsub) == []
    assert store.get("tiny").replicas[0].last_seen == clock.now
    # A real change is still announced.
    store.register("tiny", beat.model_copy(update={"ready": False}))
    assert _changes(pubsub) == [{"model": "tiny", "change": "replica_updated"}]
    changed = beat.model_copy(update={"info": beat.info.model_copy(update={"max_model_len": 64})})
    store.register("tiny", changed)
    assert [c["change"] for c in _changes(pubsub)] == ["model_updated", "replica_updated"]


def test_a_model_without_replicas_for_the_expiry_is_removed(redis_client: redis.Redis, prefix: str) -> None:
    clock = FakeClock()
    store = RegistryStore(redis_client, prefix, clock=clock)
    store.register("tiny", registration("http://a", ttl_s=2))
    store.register("other", registration("http://b", ttl_s=2, name="other"))
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(changes_channel(prefix))
    pubsub.get_message(timeout=1)

    assert store.expire_vacant(60) == []
    clock.now += 3
    store.reap_expired()
    # First sweep without replicas: the vacancy starts now.
    assert store.expire_vacant(60) == []
    clock.now += 30
    store.register("other", registration("http://b", ttl_s=2, name="other"))
    assert store.expire_vacant(60) == []
    clock.now += 31
    assert store.expire_vacant(60) == ["tiny"]
    assert {"model": "tiny", "change": "model_expired"} in _changes(pubsub)
    assert [m.name for m in store.list_models().models] == ["other"]
    # "other" came back before its vacancy ran out: its clock starts again.
    clock.now += 10
    store.reap_expired()
    assert store.expire_vacant(60) == []
    clock.now += 59
    assert store.expire_vacant(60) == []
    clock.now += 2
    assert store.expire_vacant(60) == ["other"]
    assert store.list_models().models == []
    # A worker that registers again creates the model anew.
    store.register("tiny", registration("http://a", ttl_s=2))
    assert store.get("tiny").replicas[0].url == "http://a"


def test_the_sweeper_expires_models_after_the_configured_time(redis_url: str, prefix: str) -> None:
    settings = RegistrySettings(
        redis_url=redis_url,
        stream_prefix=prefix,
        reap_interval_s=0.05,
        model_expiry_s=0.5,
        check_replica_address=False,
    )
    app = create_app(settings)
    client = app.test_client()
    body = registration("http://a", ttl_s=0.2).model_dump(mode="json")
    assert client.post("/registry/models/tiny/replicas", json=body).status_code == 200
    started = time.monotonic()
    deadline = started + 10
    while client.get("/registry/models/tiny").status_code == 200:
        assert time.monotonic() < deadline, "the model was never removed"
        time.sleep(0.05)
    # Lease (0.2 s) plus expiry (0.5 s), at the sweeper's pace.
    assert time.monotonic() - started >= 0.6
    app.extensions["infergate_reaper"].stop()
