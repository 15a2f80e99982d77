"""Replica choice policies: fewest in flight, session affinity and
prefix-aware consistent hashing with bounded load."""

from __future__ import annotations

import collections
import contextvars
import json
import time
from pathlib import Path

import requests
from conftest import router_settings
from router_processes import Stack

from infergate_common.registry_api import ModelRecord, ReplicaRecord, RoutingPolicy
from infergate_common.worker_api import Backend, Task
from infergate_router.app import create_app
from infergate_router.replica_choice import InFlight
from infergate_router.routing_policies import (
    LOAD_FACTOR,
    PrefixTable,
    bounded_hash,
    choose_replica,
    prefix_owner,
    prompt_prefix,
    set_route_hint,
)
from infergate_router.services import EXTENSION

REPLICAS = [ReplicaRecord(url=f"http://10.0.0.{i}:8100") for i in range(1, 5)]


def _model(policy: RoutingPolicy, replicas: list[ReplicaRecord] = REPLICAS) -> ModelRecord:
    return ModelRecord(
        name="m", model_id="m", task=Task.TEXT_GENERATION, backend=Backend.NULL,
        replicas=replicas, routing_policy=policy,
    )  # fmt: skip


def _idle(_: str) -> int:
    return 0


def test_prompt_prefix_of_each_prompt_form() -> None:
    assert prompt_prefix({"prompt": "abc"}) == "abc"
    assert prompt_prefix({"prompt": ["first", "second"]}) == "first"
    assert prompt_prefix({"prompt": [1, 2, 3]}) == "1 2 3"
    chat = {"messages": [{"role": "system", "content": "S" * 600}, {"role": "user", "content": "hi"}]}
    assert prompt_prefix(chat) == ("system:" + "S" * 600)[:512]
    assert prompt_prefix({"input": "x"}) is None


def test_the_same_key_goes_to_the_same_replica_and_keys_spread() -> None:
    first = bounded_hash(REPLICAS, _idle, "system prompt A")
    assert all(bounded_hash(REPLICAS, _idle, "system prompt A") is first for _ in range(20))
    chosen = collections.Counter(bounded_hash(REPLICAS, _idle, f"prompt {i}").url for i in range(400))
    assert set(chosen) == {r.url for r in REPLICAS}
    assert max(chosen.values()) < 2 * min(chosen.values())


def test_a_replica_leaving_moves_only_its_own_keys() -> None:
    keys = [f"prompt {i}" for i in range(200)]
    before = {k: bounded_hash(REPLICAS, _idle, k).url for k in keys}
    gone = REPLICAS[0].url
    after = {k: bounded_hash(REPLICAS[1:], _idle, k).url for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == gone for k in moved)


def test_bounded_load_spills_a_hot_key_to_its_next_replica() -> None:
    home = bounded_hash(REPLICAS, _idle, "hot")
    loads = {r.url: 8 for r in REPLICAS}
    loads[home.url] = 14  # the mean after this request is 9.75; the bound, 1.5x of it, 14.6
    spilled = bounded_hash(REPLICAS, loads.__getitem__, "hot")
    assert spilled is not home
    loads[home.url] = 12
    assert bounded_hash(REPLICAS, loads.__getitem__, "hot") is home


def test_keyed_choice_under_a_closed_loop_stays_within_the_bound() -> None:
    """32 requests in flight over 4 replicas, all with one of 3 prefixes:
    the busiest replica stays within LOAD_FACTOR of the mean."""
    loads = {r.url: 0 for r in REPLICAS}
    for i in range(32):
        loads[bounded_hash(REPLICAS, loads.__getitem__, f"prefix {i % 3}").url] += 1
    assert max(loads.values()) <= LOAD_FACTOR * 32 / 4 + 1e-9


def test_prefixes_are_spread_one_per_replica_then_stick() -> None:
    """A few prefixes: hashing alone would pile some on one replica; the
    table gives each new prefix to the replica holding the fewest."""
    table = PrefixTable()
    owners = [prefix_owner(REPLICAS, _idle, f"system prompt {i}", table, "m").url for i in range(8)]
    assert sorted(collections.Counter(owners).values()) == [2, 2, 2, 2]
    again = [prefix_owner(REPLICAS, _idle, f"system prompt {i}", table, "m").url for i in range(8)]
    assert again == owners
    # A replica that left: its prefixes find new owners; the others stay.
    rest = REPLICAS[1:]
    moved = [prefix_owner(rest, _idle, f"system prompt {i}", table, "m").url for i in range(8)]
    assert all(m == o for m, o in zip(moved, owners, strict=True) if o != REPLICAS[0].url)
    # Over the bound, a request spills; the owner stays the owner.
    loads = {r.url: 4 for r in REPLICAS}
    loads[owners[0]] = 9
    assert prefix_owner(REPLICAS, loads.__getitem__, "system prompt 0", table, "m").url != owners[0]
    assert prefix_owner(REPLICAS, _idle, "system prompt 0", table, "m").url == owners[0]


def test_the_prefix_table_is_bounded() -> None:
    table = PrefixTable(capacity=3)
    for i in range(10):
        table.assign("m", f"k{i}", REPLICAS[i % 2].url)
    assert table.owner("m", "k0") is None and table.owner("m", "k9") == REPLICAS[1].url
    assert table.held(REPLICAS[0].url) + table.held(REPLICAS[1].url) == 3


def test_policies_fall_back_to_fewest_in_flight_without_a_key() -> None:
    loads = {r.url: 3 for r in REPLICAS}
    loads[REPLICAS[2].url] = 1
    for policy in RoutingPolicy:
        assert choose_replica(policy, REPLICAS, loads.__getitem__, None, PrefixTable(), "m") is REPLICAS[2]


def test_in_flight_choose_reads_the_model_policy_and_the_request_hint() -> None:
    inflight = InFlight()
    inflight.acquire(REPLICAS[0].url)

    def pick(policy: RoutingPolicy, body: dict[str, object], headers: dict[str, str]) -> str:
        def run() -> str:
            set_route_hint(body, headers)
            return inflight.choose(_model(policy)).url

        return contextvars.copy_context().run(run)

    # Fewest in flight never picks the busy replica.
    assert all(pick(RoutingPolicy.FEWEST_IN_FLIGHT, {}, {}) != REPLICAS[0].url for _ in range(20))
    user = {"user": "alice", "prompt": "hello"}
    assert len({pick(RoutingPolicy.SESSION_AFFINITY, user, {}) for _ in range(10)}) == 1
    by_header = {
        pick(RoutingPolicy.SESSION_AFFINITY, {"prompt": str(i)}, {"X-Session-Id": "s1"}) for i in range(10)
    }
    assert len(by_header) == 1
    long_system = "You are a helpful assistant. " * 30
    shared = [{"messages": [{"role": "system", "content": long_system}, {"role": "user", "content": str(i)}]}
              for i in range(10)]  # fmt: skip
    assert len({pick(RoutingPolicy.PREFIX_AWARE, body, {}) for body in shared}) == 1
    # The replica set excludes what the dispatcher already tried.
    home = pick(RoutingPolicy.PREFIX_AWARE, shared[0], {})

    def excluded() -> str:
        set_route_hint(shared[0], {})
        return inflight.choose(_model(RoutingPolicy.PREFIX_AWARE), exclude={home}).url

    assert contextvars.copy_context().run(excluded) != home


# ------------------------------------------------- through the real router


def test_prefix_aware_keeps_a_shared_prefix_on_one_real_replica(stack: Stack, tmp_path: Path) -> None:
    """Two real benchmark-engine replicas started with --routing_policy
    prefix_aware; requests sharing a long prompt prefix all reach one of
    them (their own load meters count), different prefixes reach both."""
    files = [tmp_path / f"r{i}.json" for i in range(2)]
    for path in files:
        stack.start_null_worker("prefixed", tokens=2, extra_args=["--routing_policy", "prefix_aware",
                                                                   "--stats_file", str(path)])  # fmt: skip
    record = requests.get(f"{stack.registry_url}/registry/models/prefixed", timeout=5).json()
    assert record["routing_policy"] == "prefix_aware"
    app = create_app(router_settings(stack))
    client = app.test_client()

    def served() -> list[int]:
        counts = []
        for path in files:
            deadline = time.monotonic() + 5
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            counts.append(json.loads(path.read_text())["load"]["requests"])
        return counts

    try:
        shared = "You are a careful assistant for the billing team. " * 12
        before = served()
        for i in range(12):
            body = {"model": "prefixed", "prompt": f"{shared} Question {i}?", "max_tokens": 2}
            assert client.post("/openai/v1/completions", json=body).status_code == 200
        time.sleep(0.5)  # the stats files are rewritten every 200 ms
        delta = [a - b for a, b in zip(served(), before, strict=True)]
        assert sorted(delta) == [0, 12]
        for i in range(16):
            body = {"model": "prefixed", "prompt": f"Topic {i}: " + "details " * 80, "max_tokens": 2}
            assert client.post("/openai/v1/completions", json=body).status_code == 200
        time.sleep(0.5)
        spread = [a - b for a, b in zip(served(), before, strict=True)]
        assert min(spread) > 0 and sum(spread) == 28
    finally:
        app.extensions[EXTENSION].close()
