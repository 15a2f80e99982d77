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


def _owners(ready: list[ReplicaRecord], table: PrefixTable, keys: int) -> list[str]:
    return [prefix_owner(ready, _idle, f"system prompt {i}", table, "m").url for i in range(keys)]


def test_a_replica_that_leaves_hands_on_its_prefixes_and_one_that_joins_takes_its_share() -> None:
    table = PrefixTable()
    owners = _owners(REPLICAS, table, 12)  # three each
    gone = REPLICAS[0].url
    rest = REPLICAS[1:]
    moved = _owners(rest, table, 12)
    assert all(m == o for m, o in zip(moved, owners, strict=True) if o != gone)
    assert sorted(collections.Counter(moved).values()) == [4, 4, 4]
    # It comes back (or a new replica joins): prefixes move to it, one at a
    # time, until every replica holds three; then nothing moves any more.
    back = _owners(REPLICAS, table, 12)
    assert sorted(collections.Counter(back).values()) == [3, 3, 3, 3]
    assert sum(b != m for b, m in zip(back, moved, strict=True)) == 3  # only what the newcomer took
    assert _owners(REPLICAS, table, 12) == back


def test_a_move_to_the_replica_holding_fewest_waits_for_room_under_the_bound() -> None:
    table = PrefixTable()
    moved = _owners(REPLICAS[1:], table, 6)  # two each on three replicas
    newcomer = REPLICAS[0].url
    loads = {r.url: 1 for r in REPLICAS}
    loads[newcomer] = 5  # mean after this request 2.25, bound 4.25: no room
    assert prefix_owner(REPLICAS, loads.__getitem__, "system prompt 0", table, "m").url == moved[0]
    assert table.held(newcomer) == 0
    assert prefix_owner(REPLICAS, _idle, "system prompt 0", table, "m").url == newcomer


def test_over_the_bound_a_prefix_spills_to_the_least_loaded_replica_and_keeps_its_owner() -> None:
    table = PrefixTable()
    owners = _owners(REPLICAS, table, 8)
    owner = owners[0]
    others = [r.url for r in REPLICAS if r.url != owner]
    # The least loaded of the others takes the spill, wherever it stands in
    # the key's order; the busy ones are passed by even though within bound.
    for quiet in others:
        loads = {url: 5 for url in others}
        loads[quiet] = 1
        loads[owner] = 9  # mean after this request 5.25, bound 7.875
        assert prefix_owner(REPLICAS, loads.__getitem__, "system prompt 0", table, "m").url == quiet
    assert prefix_owner(REPLICAS, _idle, "system prompt 0", table, "m").url == owner
    assert table.owner("m", "system prompt 0") == owner


def test_a_ready_owner_passed_over_for_one_request_keeps_its_prefix() -> None:
    """Full for a moment, or already tried by this request: the prefix goes
    elsewhere this once and comes back; only leaving the ready set moves it."""
    table = PrefixTable()
    owner = _owners(REPLICAS, table, 8)[0]
    open_ = [r for r in REPLICAS if r.url != owner]
    elsewhere = prefix_owner(open_, _idle, "system prompt 0", table, "m", passed_over={owner})
    assert elsewhere.url != owner and table.owner("m", "system prompt 0") == owner
    assert prefix_owner(REPLICAS, _idle, "system prompt 0", table, "m").url == owner
    inflight = InFlight()
    inflight.prefixes = table
    inflight.mark_full(owner, hold_s=60)

    def choose() -> str:
        set_route_hint({"prompt": "system prompt 0"}, {})
        return inflight.choose(_model(RoutingPolicy.PREFIX_AWARE)).url

    assert contextvars.copy_context().run(choose) != owner
    assert table.owner("m", "system prompt 0") == owner


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


def _served(files: list[Path]) -> list[int]:
    """Requests each replica has served, from its stats file."""
    counts = []
    for path in files:
        try:
            counts.append(json.loads(path.read_text())["load"]["requests"])
        except (OSError, ValueError, KeyError):
            counts.append(0)
    return counts


def _served_since(files: list[Path], before: list[int], total: int) -> list[int]:
    """Each replica's requests since ``before``, once ``total`` are counted
    (the stats files are rewritten every 200 ms)."""
    deadline = time.monotonic() + 10
    while True:
        delta = [a - b for a, b in zip(_served(files), before, strict=True)]
        if sum(delta) >= total or time.monotonic() > deadline:
            return delta
        time.sleep(0.05)


def _start_prefix_aware(stack: Stack, tmp_path: Path, name: str, index: int) -> Path:
    path = tmp_path / f"r{index}.json"
    stack.start_null_worker(name, tokens=2, extra_args=["--routing_policy", "prefix_aware",
                                                        "--stats_file", str(path)])  # fmt: skip
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path


def test_prefix_aware_keeps_a_shared_prefix_on_one_real_replica(stack: Stack, tmp_path: Path) -> None:
    """Two real benchmark-engine replicas started with --routing_policy
    prefix_aware; requests sharing a long prompt prefix all reach one of
    them (their own load meters count), different prefixes reach both."""
    files = [_start_prefix_aware(stack, tmp_path, "prefixed", i) for i in range(2)]
    record = requests.get(f"{stack.registry_url}/registry/models/prefixed", timeout=5).json()
    assert record["routing_policy"] == "prefix_aware"
    app = create_app(router_settings(stack))
    client = app.test_client()
    try:
        shared = "You are a careful assistant for the billing team. " * 12
        before = _served(files)
        for i in range(12):
            body = {"model": "prefixed", "prompt": f"{shared} Question {i}?", "max_tokens": 2}
            assert client.post("/openai/v1/completions", json=body).status_code == 200
        assert sorted(_served_since(files, before, 12)) == [0, 12]
        for i in range(16):
            body = {"model": "prefixed", "prompt": f"Topic {i}: " + "details " * 80, "max_tokens": 2}
            assert client.post("/openai/v1/completions", json=body).status_code == 200
        spread = _served_since(files, before, 28)
        assert min(spread) > 0 and sum(spread) == 28
    finally:
        app.extensions[EXTENSION].close()


def test_a_replica_that_joins_takes_its_share_of_known_prefixes(stack: Stack, tmp_path: Path) -> None:
    """Two real replicas hold three system prompts each; a third joins
    (scale-out) and, within one round of requests, serves two of the six
    prompts while each old replica keeps two, every prompt on one replica."""
    prompts = [f"System prompt {p}: you answer questions about product line {p}. " * 10 for p in range(6)]
    app = create_app(router_settings(stack))
    client = app.test_client()
    services = app.extensions[EXTENSION]

    def ask(rounds: int) -> None:
        for r in range(rounds):
            for p, prompt in enumerate(prompts):
                body = {"model": "joined", "max_tokens": 2,
                        "messages": [{"role": "system", "content": prompt},
                                     {"role": "user", "content": f"question {r} on {p}"}]}  # fmt: skip
                assert client.post("/openai/v1/chat/completions", json=body).status_code == 200

    try:
        files = [_start_prefix_aware(stack, tmp_path, "joined", i) for i in range(2)]
        before = _served(files)
        ask(2)
        assert sorted(_served_since(files, before, 12)) == [6, 6]
        files.append(_start_prefix_aware(stack, tmp_path, "joined", 2))
        deadline = time.monotonic() + 10
        while len([r for r in services.directory.resolve(None, "joined").replicas if r.ready]) < 3:
            assert time.monotonic() < deadline, "the router never saw the third replica"
            time.sleep(0.05)
        before = _served(files)
        ask(4)
        assert _served_since(files, before, 24) == [8, 8, 8]
    finally:
        services.close()
