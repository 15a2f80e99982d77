"""API keys, scopes, revocation and rate limits across router processes
and router pods: one stack whose routers require keys (two gunicorn
masters of two processes each over one Redis and one registry), keys made
with the CLI against the registry's admin API, null-engine workers, the
``openai`` SDK and plain HTTP.

Tolerances: a requests-per-minute limit admits exactly N requests in any
sliding minute (counted per second by Redis's clock), here all within a
few seconds, so exactly N; a token limit admits while the minute's tokens
are under it, so it is passed by at most the requests in flight at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
import redis
import requests
from conftest import ROUTER_ENV
from harness.stack import Stack

from infergate_common.api_keys import digest

MODEL_A = "sec-a"
MODEL_B = "sec-b"


@dataclass
class Keyed:
    stack: Stack
    pods: list[str]
    # Every key handed out in this module, to look for later in Redis, logs and metrics.
    secrets: list[str] = field(default_factory=list)

    def cli(self, *args: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "infergate_router.keys", "--registry_url", self.stack.registry_url, *args],
            env={**os.environ, "INFERGATE_ADMIN_TOKEN": self.stack.admin_token},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    def create(self, *args: str) -> str:
        secret = self.cli("create", *args)[0]
        self.secrets.append(secret)
        return secret

    def key_id(self, secret: str) -> str:
        listed = json.loads("\n".join(self.cli("list")))
        client = self.stack.redis.client()
        try:
            for record in listed:
                stored = client.hget(f"{self.stack.prefix}:auth:keys", record["id"])
                if stored and digest(secret) in stored:
                    return str(record["id"])
        finally:
            client.close()
        raise AssertionError("key not listed")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    env = {**ROUTER_ENV, "INFERGATE_REQUIRE_API_KEY": "true"}
    stack = Stack(tmp_path_factory.mktemp("keyed"), prefix="keyed", router_env=env, router_workers=2)
    stack.start()
    try:
        second = stack.start_extra_router(workers=2)
        stack.null_worker(MODEL_A, "--tokens", "4")
        stack.null_worker(MODEL_B, "--tokens", "4")
        yield Keyed(stack, [stack.router_url, second])
    finally:
        stack.stop()


def chat(model: str = MODEL_A, stream: bool = False) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4,
        "stream": stream,
    }


def post(base: str, key: str | None, body: dict[str, object], **headers: str) -> requests.Response:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    # A new connection each time, so the router's processes share the work.
    return requests.post(
        f"{base}/openai/v1/chat/completions", json=body, headers={**auth, **headers}, timeout=30
    )


def sdk(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/openai/v1", api_key=key, max_retries=0, timeout=30)


def test_missing_or_wrong_keys_are_401_in_each_shape(keyed: Keyed) -> None:
    base = keyed.pods[0]
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(base, "igk-not-a-key").chat.completions.create(
            model=MODEL_A, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.response.headers["www-authenticate"].startswith("Bearer")
    assert post(base, None, chat()).status_code == 401
    v1 = requests.post(f"{base}/v1/models/{MODEL_A}:predict", json={"instances": ["x"]}, timeout=10)
    assert v1.status_code == 401 and isinstance(v1.json()["error"], str)
    assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code in (200, 503)


def test_a_key_sees_and_calls_only_its_models(keyed: Keyed) -> None:
    key_a = keyed.create("--name", "a", "--models", MODEL_A)
    key_b = keyed.create("--name", "b", "--models", "sec-b*")
    for base in keyed.pods:
        assert [m.id for m in sdk(base, key_a).models.list()] == [MODEL_A]
        assert [m.id for m in sdk(base, key_b).models.list()] == [MODEL_B]
        hidden = post(base, key_a, chat(MODEL_B))
        unknown = post(base, key_a, chat("sec-none"))
        assert hidden.status_code == unknown.status_code == 404
        assert hidden.json()["error"] == {
            **unknown.json()["error"],
            "message": hidden.json()["error"]["message"],
        }
        assert hidden.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
            "sec-none", MODEL_B
        )
        with pytest.raises(openai.NotFoundError):
            sdk(base, key_b).chat.completions.create(
                model=MODEL_A, messages=[{"role": "user", "content": "hi"}]
            )
        assert (
            sdk(base, key_a)
            .chat.completions.create(
                model=MODEL_A, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            .choices
        )
        v2 = requests.get(
            f"{base}/v2/models/{MODEL_A}", headers={"Authorization": f"Bearer {key_b}"}, timeout=10
        )
        assert v2.status_code == 404


def _round(keyed: Keyed, key: str, per_pod: int) -> list[int]:
    return [post(base, key, chat()).status_code for base in keyed.pods for _ in range(per_pod)]


def test_a_revoked_key_stops_working_within_a_second_everywhere(keyed: Keyed) -> None:
    key = keyed.create("--name", "short-lived")
    key_id = keyed.key_id(key)
    # Every process of both pods has used (and cached) the key.
    assert set(_round(keyed, key, per_pod=8)) == {200}
    keyed.cli("revoke", key_id)
    revoked_at = time.monotonic()
    while set(_round(keyed, key, per_pod=4)) != {401}:
        assert time.monotonic() - revoked_at < 1.0, "a router process still accepted the key after 1 s"
    assert time.monotonic() - revoked_at < 1.0
    assert set(_round(keyed, key, per_pod=8)) == {401}


def test_a_rotated_key_replaces_the_old_one(keyed: Keyed) -> None:
    old = keyed.create("--name", "rotating", "--rpm", "1000")
    key_id = keyed.key_id(old)
    new = keyed.cli("rotate", key_id)[0]
    keyed.secrets.append(new)
    deadline = time.monotonic() + 1.0
    while set(_round(keyed, old, per_pod=2)) != {401} or set(_round(keyed, new, per_pod=2)) != {200}:
        assert time.monotonic() < deadline, "rotation did not take effect within a second"


def test_a_requests_limit_holds_across_processes_and_pods(keyed: Keyed) -> None:
    limit = 12
    key = keyed.create("--name", "limited", "--rpm", str(limit))
    targets = [keyed.pods[i % 2] for i in range(3 * limit)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda base: post(base, key, chat()), targets))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == limit, statuses
    assert statuses.count(429) == 2 * limit
    for response in responses:
        assert response.headers["x-ratelimit-limit-requests"] == str(limit)
        if response.status_code == 429:
            assert 1 <= int(response.headers["Retry-After"]) <= 60
            assert response.json()["error"]["type"] == "rate_limit_exceeded"
            assert response.headers["x-ratelimit-remaining-requests"] == "0"
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.ok)
    assert remaining == list(range(limit))


def _window(keyed: Keyed, key_id: str, kind: str) -> int:
    client = keyed.stack.redis.client()
    try:
        values = client.hgetall(f"{keyed.stack.prefix}:ratelimit:key:{key_id}:{kind}")
        return sum(int(v) for v in values.values())
    finally:
        client.close()


def test_a_busy_key_is_counted_exactly_when_its_processes_stop(keyed: Keyed) -> None:
    """Requests of a busy key are admitted from blocks of its limit that
    each router process reserves in Redis (counted there as used until
    admitted or given back). Once a pod has stopped, the window holds
    exactly the requests it admitted and the tokens they used: what was
    left of its block and the tokens it counted itself reached Redis before
    it exited (through its flusher, or its ``worker_exit`` hook for a block
    younger than a second)."""
    key = keyed.create("--name", "busy", "--rpm", "100000", "--tpm", "10000000")
    key_id = keyed.key_id(key)
    pod = keyed.stack.start_extra_router(workers=1, env={"INFERGATE_DRAIN_S": "0"})
    process = keyed.stack.extra_routers.pop()
    try:
        started = time.monotonic()
        responses = [post(pod, key, chat()) for _ in range(10)]
        assert [r.status_code for r in responses] == [200] * 10
        assert _window(keyed, key_id, "requests") > 10, "no block was reserved"
    finally:
        process.stop(grace_s=15)
    stopped_s = time.monotonic() - started
    # Read at once: the process is gone, and a block it had not given back
    # would stay counted until it aged out of the window (60 s).
    assert _window(keyed, key_id, "requests") == 10, f"stopped {stopped_s:.2f} s after the block was reserved"
    assert _window(keyed, key_id, "tokens") == sum(r.json()["usage"]["total_tokens"] for r in responses)


def test_the_openai_sdk_sees_the_rate_limit_headers(keyed: Keyed) -> None:
    key = keyed.create("--name", "sdk", "--rpm", "2", "--tpm", "100000")
    client = sdk(keyed.pods[1], key)
    messages = [{"role": "user", "content": "hi"}]
    raw = client.chat.completions.with_raw_response.create(model=MODEL_A, messages=messages, max_tokens=2)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert raw.parse().choices[0].message.role == "assistant"
    client.chat.completions.create(model=MODEL_A, messages=messages, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL_A, messages=messages, max_tokens=2)
    assert caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_token_limit_settles_from_real_usage(keyed: Keyed) -> None:
    limit = 40
    key = keyed.create("--name", "tokens", "--tpm", str(limit))
    key_id = keyed.key_id(key)
    used: list[int] = []
    refused = None
    for i in range(20):
        base = keyed.pods[i % 2]
        stream = i % 3 == 1
        body = {**chat(stream=stream), **({"stream_options": {"include_usage": True}} if stream else {})}
        response = post(base, key, body)
        if response.status_code == 429:
            refused = response
            break
        assert response.status_code == 200
        if stream:
            last = [line for line in response.text.splitlines() if line.startswith("data: {")][-1]
            used.append(json.loads(last[6:])["usage"]["total_tokens"])
        else:
            used.append(response.json()["usage"]["total_tokens"])
        # Settled once the response was sent: wait for it before the next request.
        deadline = time.monotonic() + 5
        while _window(keyed, key_id, "tokens") != sum(used):
            assert time.monotonic() < deadline, (
                f"usage {sum(used)} not settled: {_window(keyed, key_id, 'tokens')}"
            )
            time.sleep(0.01)
    assert refused is not None, "the token limit never refused"
    assert "tokens per minute" in refused.json()["error"]["message"]
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    # Admitted exactly while under the limit.
    assert sum(used[:-1]) < limit <= sum(used)


def test_streams_belong_to_their_key_on_every_pod(keyed: Keyed) -> None:
    alice = keyed.create("--name", "alice")
    bob = keyed.create("--name", "bob")
    rid = f"mine-{uuid.uuid4().hex[:8]}"
    opened = post(keyed.pods[0], alice, chat(stream=True), **{"X-Request-Id": rid})
    assert opened.status_code == 200 and "[DONE]" in opened.text
    for base in keyed.pods:
        stolen = requests.get(
            f"{base}/openai/v1/streams/{rid}", headers={"Authorization": f"Bearer {bob}"}, timeout=10
        )
        assert stolen.status_code == 404
        resumed = post(base, bob, chat(stream=True), **{"X-Request-Id": rid, "Last-Event-ID": "0-0"})
        assert resumed.status_code == 404
    replay = requests.get(
        f"{keyed.pods[1]}/openai/v1/streams/{rid}", headers={"Authorization": f"Bearer {alice}"}, timeout=10
    )
    assert replay.status_code == 200 and "[DONE]" in replay.text
    own = post(keyed.pods[1], bob, chat(stream=True), **{"X-Request-Id": rid})
    assert own.status_code == 200 and "[DONE]" in own.text


def _redis_dump(client: redis.Redis) -> str:
    parts = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        kind = client.type(key)
        if kind == "string":
            parts.append(str(client.get(key)))
        elif kind == "hash":
            parts.append(str(client.hgetall(key)))
        elif kind == "zset":
            parts.append(str(client.zrange(key, 0, -1, withscores=True)))
        elif kind == "set":
            parts.append(str(client.smembers(key)))
        elif kind == "list":
            parts.append(str(client.lrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(str(client.xrange(key)))
    return "\n".join(parts)


def test_keys_appear_nowhere_in_clear(keyed: Keyed) -> None:
    """Runs last in this module: every key handed out above was used."""
    assert len(keyed.secrets) >= 8
    client = keyed.stack.redis.client()
    try:
        dump = _redis_dump(client)
    finally:
        client.close()
    logs = "\n".join(p.read_text(errors="replace") for p in Path(keyed.stack.logs).glob("*.log"))
    metrics = "\n".join(requests.get(keyed.stack.metrics_urls[base], timeout=10).text for base in keyed.pods)
    assert "igk-" not in dump and "igk-" not in logs and "igk-" not in metrics
    for secret in keyed.secrets:
        assert secret not in dump and secret not in logs and secret not in metrics
    # The digests are there, so the right places were searched.
    assert sum(digest(secret) in dump for secret in keyed.secrets) >= 6
    assert "request" in logs and "infergate_router_requests_total" in metrics
