"""Rate limits: the Redis scripts against a real redis-server, and the
router's 429s and ``x-ratelimit-*`` headers through the app."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import router_settings
from flask import Flask
from flask.testing import FlaskClient
from router_processes import RedisServer, Stack, free_port

from infergate_common.api_keys import KeyLimits
from infergate_common.errors import ServiceUnavailable
from infergate_router.app import create_app
from infergate_router.auth import reservations
from infergate_router.auth.limiter import RateLimiter, Scope, duration
from infergate_router.services import EXTENSION


@pytest.fixture
def limiter(redis_server: RedisServer) -> Iterator[RateLimiter]:
    client = redis.Redis.from_url(redis_server.url)
    yield RateLimiter(client, f"rl{uuid.uuid4().hex[:8]}", lease_s=30, fail_open=False)
    client.close()


def scope(**limits: int) -> Scope:
    return Scope(f"key:{uuid.uuid4().hex[:8]}", KeyLimits(**limits))


def test_exactly_the_limit_is_admitted_then_retry_after(limiter: RateLimiter) -> None:
    key = scope(rpm=5)
    decisions = [limiter.admit([key], f"m{i}") for i in range(12)]
    assert all(d is not None for d in decisions)
    allowed = [d for d in decisions if d and d.allowed]
    assert len(allowed) == 5
    assert [d.usage[0].requests for d in allowed] == [1, 2, 3, 4, 5]
    refused = [d for d in decisions if d and not d.allowed]
    # Counted in the second of the first admission: free again within a minute.
    assert all(0 < d.retry_after_ms <= 60_000 for d in refused)
    assert all(d.usage[0].requests == 5 for d in refused)
    assert all(0 < d.usage[0].requests_reset_ms <= 60_000 for d in allowed)


def test_tokens_settle_after_the_fact(limiter: RateLimiter) -> None:
    key = scope(tpm=100)
    first = limiter.admit([key], "a")
    assert first is not None and first.allowed and first.usage[0].tokens == 0
    limiter.settle([key], "a", 60)
    second = limiter.admit([key], "b")
    assert second is not None and second.allowed and second.usage[0].tokens == 60
    limiter.settle([key], "b", 60)
    third = limiter.admit([key], "c")
    # 120 used of 100: refused until the first second's tokens leave the window.
    assert third is not None and not third.allowed and third.usage[0].tokens == 120
    assert 0 < third.retry_after_ms <= 60_000


def test_concurrency_slots_are_freed_by_settling(limiter: RateLimiter) -> None:
    key = scope(max_concurrent=2)
    assert all(d and d.allowed for d in (limiter.admit([key], "x"), limiter.admit([key], "y")))
    blocked = limiter.admit([key], "z")
    assert blocked is not None and not blocked.allowed and blocked.usage[0].inflight == 2
    limiter.settle([key], "x", 0)
    again = limiter.admit([key], "z")
    assert again is not None and again.allowed


def test_a_full_scope_counts_nothing_in_the_others(limiter: RateLimiter) -> None:
    key, model = scope(rpm=10), scope(rpm=1)
    assert (limiter.admit([key, model], "1") or pytest.fail()).allowed
    refused = limiter.admit([key, model], "2")
    assert refused is not None and not refused.allowed
    # The key's count did not move for the refused request.
    assert refused.usage[0].requests == 1
    alone = limiter.admit([key], "3")
    assert alone is not None and alone.usage[0].requests == 2


def test_redis_unreachable_fails_closed_or_open() -> None:
    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    with pytest.raises(ServiceUnavailable):
        RateLimiter(dead, "x", 30, fail_open=False).admit([scope(rpm=1)], "m")
    assert RateLimiter(dead, "x", 30, fail_open=True).admit([scope(rpm=1)], "m") is None


def _counted(limiter: RateLimiter, key: Scope, kind: str = "requests") -> int:
    values = limiter.client.hgetall(f"{limiter.prefix}:ratelimit:{key.name}:{kind}")
    return sum(int(v) for v in values.values())


def _until(condition: Callable[[], bool], what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_busy_key_is_admitted_from_a_block_counted_in_redis(limiter: RateLimiter) -> None:
    key = scope(rpm=10_000)
    first = limiter.admit([key], "m0")
    assert first is not None and first.allowed and not first.local
    # One request, and a block of MOST more counted for this process to admit.
    assert _counted(limiter, key) == 1 + reservations.MOST
    assert first.usage[0].requests == 1
    rest = [limiter.admit([key], f"m{i}") for i in range(1, 1 + reservations.MOST)]
    assert all(d is not None and d.allowed and d.local for d in rest)
    # The caller's count moves one by one, as if each had gone to Redis.
    assert [d.usage[0].requests for d in rest if d] == list(range(2, 2 + reservations.MOST))
    assert _counted(limiter, key) == 1 + reservations.MOST
    # The block is used up: the next request goes to Redis again (and gets a new block).
    after = limiter.admit([key], "next")
    assert after is not None and after.allowed and not after.local
    assert _counted(limiter, key) == 2 + 2 * reservations.MOST


def test_what_a_block_leaves_is_given_back(limiter: RateLimiter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reservations, "LIFE_S", 0.3)
    key = scope(rpm=10_000)
    for i in range(5):
        assert (limiter.admit([key], f"m{i}") or pytest.fail()).allowed
    assert _counted(limiter, key) == 1 + reservations.MOST
    # Past the block's life the rest is subtracted again: five requests counted.
    _until(lambda: _counted(limiter, key) == 5, "the unused part of the block was not given back")
    later = limiter.admit([key], "later")
    assert later is not None and not later.local and later.usage[0].requests == 6


def test_a_stopping_process_gives_back_its_blocks_at_once(limiter: RateLimiter) -> None:
    key = scope(rpm=10_000, tpm=1_000_000)
    for i in range(3):
        limiter.admit([key], f"m{i}")
        limiter.settle([key], f"m{i}", 10)
    assert _counted(limiter, key) == 1 + reservations.MOST
    # What services.close() and gunicorn's worker_exit call: the block is young, yet given back.
    limiter.flush()
    assert (_counted(limiter, key), _counted(limiter, key, "tokens")) == (3, 30)


def test_blocks_never_pass_the_limit_across_processes(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reservations, "LIFE_S", 0.2)
    prefix = f"rl{uuid.uuid4().hex[:8]}"
    clients = [redis.Redis.from_url(redis_server.url) for _ in range(2)]
    processes = [RateLimiter(c, prefix, lease_s=30, fail_open=False) for c in clients]
    key = scope(rpm=300)
    admitted = 0
    try:
        # Two processes take turns until both are refused after every block is back.
        deadline = time.monotonic() + 20
        refused_in_a_row = 0
        i = 0
        while refused_in_a_row < 4:
            assert time.monotonic() < deadline, f"admitted {admitted}"
            decision = processes[i % 2].admit([key], f"m{i}")
            i += 1
            assert decision is not None
            if decision.allowed:
                admitted += 1
                refused_in_a_row = 0
                continue
            refused_in_a_row += 1
            time.sleep(0.1)
            for process in processes:
                process.flush()
        assert admitted == 300
        assert _counted(processes[0], key) == 300
    finally:
        for c in clients:
            c.close()


def test_tokens_of_requests_from_a_block_reach_redis(limiter: RateLimiter) -> None:
    key = scope(rpm=10_000, tpm=1_000_000)
    first = limiter.admit([key], "a")
    assert first is not None and not first.local
    limiter.settle([key], "a", 100)
    local = limiter.admit([key], "b")
    assert local is not None and local.local
    limiter.settle([key], "b", 40)
    limiter.settle([key], "b2", 2)
    # Counted here at once, in Redis within FLUSH_S.
    state = (limiter.admit([key], "c") or pytest.fail()).usage[0]
    assert state.tokens == 142
    _until(lambda: _counted(limiter, key, "tokens") == 142, "the tokens did not reach Redis")


def test_a_block_is_not_used_near_the_token_limit(limiter: RateLimiter) -> None:
    tpm = reservations.TOKEN_FLOOR
    key = scope(tpm=tpm)
    assert not (limiter.admit([key], "a") or pytest.fail()).local
    assert (limiter.admit([key], "b") or pytest.fail()).local
    # Within 1/SHARE of the limit every request is checked in Redis again.
    limiter.settle([key], "b", tpm - tpm // reservations.SHARE)
    _until(lambda: _counted(limiter, key, "tokens") == tpm - tpm // reservations.SHARE, "tokens not sent")
    near = limiter.admit([key], "c")
    assert near is not None and near.allowed and not near.local


@pytest.mark.parametrize(
    "limits",
    [
        {"rpm": reservations.SHARE},
        {"rpm": 10_000, "max_concurrent": 5},
        {"tpm": reservations.TOKEN_FLOOR - 1},
    ],
    ids=["a limit too small to share", "a concurrency limit", "a token limit under the floor"],
)
def test_some_scopes_are_checked_in_redis_for_every_request(
    limiter: RateLimiter, limits: dict[str, int]
) -> None:
    key = scope(**limits)
    decisions = [limiter.admit([key], f"m{i}") for i in range(4)]
    assert all(d is not None and d.allowed and not d.local for d in decisions)
    if "rpm" in limits:
        assert _counted(limiter, key) == 4
    # A scope without a block makes its companions go to Redis too.
    busy = scope(rpm=10_000)
    limiter.admit([busy], "warm")
    assert (limiter.admit([busy], "busy") or pytest.fail()).local
    together = limiter.admit([busy, key], "both")
    assert together is not None and not together.local


def test_a_scope_too_small_for_a_block_does_not_wait_for_another_request(limiter: RateLimiter) -> None:
    small = scope(rpm=reservations.SHARE)
    # Another request of the process is asking Redis for blocks of the same scope.
    asking = limiter.blocks.refill([small.name])
    assert asking is not None
    try:
        start = time.monotonic()
        decision = limiter.admit([small], "m")
        assert time.monotonic() - start < reservations.REFILL_WAIT_S / 2
        assert decision is not None and decision.allowed and not decision.local
    finally:
        asking.done()


def test_changed_limits_are_not_admitted_from_an_old_block(limiter: RateLimiter) -> None:
    key = scope(rpm=10_000)
    limiter.admit([key], "a")
    assert (limiter.admit([key], "b") or pytest.fail()).local
    lowered = Scope(key.name, KeyLimits(rpm=3))
    decision = limiter.admit([lowered], "c")
    # In Redis, against the new limit (the old block is still counted there).
    assert decision is not None and not decision.local and not decision.allowed


def test_what_redis_did_not_take_is_sent_when_it_answers_again() -> None:
    sent: list[reservations.SyncEntry] = []
    redis_away = True

    def sync(entries: list[reservations.SyncEntry]) -> None:
        if redis_away:
            raise redis.ConnectionError("Redis is away")
        sent.extend(entries)

    blocks = reservations.Blocks(sync)
    keys = ("k:requests", "k:tokens")
    blocks.settle(["key:k"], [keys], 5)
    blocks.settle(["key:k"], [keys], 7)
    blocks.flush()
    assert sent == []
    redis_away = False
    blocks.settle(["key:k"], [keys], 1)
    # Sent by the process's flusher within FLUSH_S: every token once, summed.
    _until(lambda: sum(entry[2] for entry in sent) == 13, f"sent {sent}")
    time.sleep(3 * reservations.FLUSH_S)
    assert sum(entry[2] for entry in sent) == 13
    assert {entry[:2] for entry in sent} == {keys}


def test_reset_durations_read_like_openai() -> None:
    assert duration(20) == "20ms"
    assert duration(1500) == "1.5s"
    assert duration(60_000) == "1m0s"
    assert duration(90_250) == "1m30.25s"


# ----------------------------------------------------------------- the app


@pytest.fixture
def limited_app(stack: Stack, tmp_path: Path) -> Iterator[tuple[FlaskClient, Flask]]:
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {"id": "reqs", "key": "key-requests", "rpm": 3},
                    {"id": "toks", "key": "key-tokens", "tpm": 40},
                ]
            }
        )
    )
    prefix_settings = router_settings(stack, api_keys_file=str(path))
    app = create_app(prefix_settings)
    yield app.test_client(), app
    app.extensions[EXTENSION].close()


def chat(stream: bool = False) -> dict[str, object]:
    return {
        "model": "null",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
    }


def test_429_in_each_shape_with_retry_after_and_headers(limited_app, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    client, _ = limited_app
    auth = {"Authorization": "Bearer key-requests"}
    seen = []
    # A Last-Event-ID on a request that resumes nothing does not escape the count.
    for extra in ({}, {"Last-Event-ID": "1-0"}, {}):
        response = client.post("/openai/v1/chat/completions", json=chat(), headers={**auth, **extra})
        assert response.status_code == 200
        seen.append(int(response.headers["x-ratelimit-remaining-requests"]))
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    assert seen == [2, 1, 0]
    refused = client.post("/openai/v1/chat/completions", json=chat(), headers=auth)
    assert refused.status_code == 429
    assert refused.json["error"]["type"] == "rate_limit_exceeded"
    assert refused.json["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    v1 = client.post("/v1/models/embed:predict", json={"instances": ["x"]}, headers=auth)
    assert v1.status_code == 429 and isinstance(v1.json["error"], str) and "Retry-After" in v1.headers
    # Listing models is not an inference request: not counted, not refused.
    assert client.get("/openai/v1/models", headers=auth).status_code == 200


def test_headers_count_down_one_by_one_from_a_block(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"id": "busy", "key": "key-busy", "rpm": 1000, "tpm": 1_000_000}]}))
    app = create_app(router_settings(stack, api_keys_file=str(path)))
    try:
        client = app.test_client()
        auth = {"Authorization": "Bearer key-busy"}
        remaining, used = [], 0
        for _ in range(5):
            response = client.post("/openai/v1/chat/completions", json=chat(), headers=auth)
            assert response.status_code == 200
            remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
            used += response.json["usage"]["total_tokens"]
            response.close()
        assert remaining == [999, 998, 997, 996, 995]
        # Every request's tokens reach the window, those admitted in the process too.
        _until(lambda: _window_tokens(stack, "busy") == used, "the tokens were not all counted")
    finally:
        app.extensions[EXTENSION].close()


def _window_tokens(stack: Stack, key_id: str) -> int:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        values = client.hgetall(f"{stack.prefix}:ratelimit:key:{key_id}:tokens")
        return sum(int(v) for v in values.values())
    finally:
        client.close()


def test_token_limits_settle_from_the_usage_of_each_response(limited_app, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    client, _ = limited_app
    auth = {"Authorization": "Bearer key-tokens"}
    plain = client.post("/openai/v1/chat/completions", json=chat(), headers=auth)
    assert plain.status_code == 200
    used = plain.json["usage"]["total_tokens"]
    assert used > 0
    # Settling runs when the server closes the response, after the body went out.
    plain.close()
    deadline = time.monotonic() + 5
    while _window_tokens(stack, "toks") != used:
        assert time.monotonic() < deadline, "the usage was not settled"
        time.sleep(0.02)
    streamed = client.post(
        "/openai/v1/chat/completions",
        json={**chat(stream=True), "stream_options": {"include_usage": True}},
        headers=auth,
    )
    events = [line[6:] for line in streamed.get_data(as_text=True).splitlines() if line.startswith("data: {")]
    streamed.close()
    stream_usage = json.loads(events[-1])["usage"]["total_tokens"]
    assert stream_usage > 0
    while _window_tokens(stack, "toks") != used + stream_usage:
        assert time.monotonic() < deadline, "the stream's usage was not settled"
        time.sleep(0.02)
    # Admitted while under 40 tokens, refused once at or over it.
    statuses = []
    while len(statuses) < 20:
        response = client.post("/openai/v1/chat/completions", json=chat(), headers=auth)
        response.close()
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert "tokens per minute" in response.json["error"]["message"]
            assert response.headers["x-ratelimit-remaining-tokens"] == "0"
            break
        total = _window_tokens(stack, "toks")
        while _window_tokens(stack, "toks") == total and time.monotonic() < deadline:
            time.sleep(0.01)
    assert statuses[-1] == 429
    assert _window_tokens(stack, "toks") >= 40


def test_a_model_cap_holds_for_everyone_without_keys(stack: Stack) -> None:
    app = create_app(router_settings(stack, model_limits=json.dumps({"embed": {"rpm": 2}})))
    try:
        client = app.test_client()
        body = {"model": "embed", "input": "x"}
        statuses = [client.post("/openai/v1/embeddings", json=body).status_code for _ in range(4)]
        assert statuses == [200, 200, 429, 429]
        refused = client.post("/openai/v1/embeddings", json=body)
        assert "model embed" in refused.json["error"]["message"]
        assert "Retry-After" in refused.headers
        # Other models are not capped.
        assert client.post("/openai/v1/chat/completions", json=chat()).status_code == 200
    finally:
        app.extensions[EXTENSION].close()
