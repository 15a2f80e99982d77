"""Trust between services, with real processes: the registry's writes and
the workers' routes need the internal credential, a replica registers only
its own address, Redis needs its password, and what reaches a client when
a part fails names no internal address. Also: the watch over response
bodies (``harness.leaks``) does catch a leak."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
import requests
from conftest import StartWorker
from harness.leaks import WATCH
from harness.stack import Stack


def registration(stack: Stack, name: str, url: str) -> dict[str, object]:
    record = requests.get(f"{stack.registry_url}/registry/models/{name}", timeout=10).json()
    info = {**record["replicas"][0]["info"], "name": name}
    return {"url": url, "info": info, "ttl_s": 5}


def test_rogue_registrations_are_refused(stack: Stack, null_worker: StartWorker) -> None:
    worker = null_worker("trust-reg", "--tokens", "2")
    url = f"{stack.registry_url}/registry/models/trust-reg"
    # Without the credential: 401, whatever the route.
    rogue = requests.post(
        f"{url}/replicas", json=registration(stack, "trust-reg", "http://127.0.0.1:9"), timeout=10
    )
    assert rogue.status_code == 401
    assert requests.put(f"{url}/domains", json={"domains": ["evil.test"]}, timeout=10).status_code == 401
    assert requests.delete(f"{url}/replicas", params={"url": worker.url}, timeout=10).status_code == 401
    assert requests.delete(url, timeout=10).status_code == 401
    # With it, but for an address that is not the caller's: 403.
    other = requests.post(
        f"{url}/replicas",
        json=registration(stack, "trust-reg", "http://127.0.0.2:8000"),
        headers=stack.internal_headers(),
        timeout=10,
    )
    assert other.status_code == 403
    metadata = requests.post(
        f"{url}/replicas",
        json=registration(stack, "trust-reg", "http://169.254.169.254/"),
        headers=stack.internal_headers(),
        timeout=10,
    )
    assert metadata.status_code == 400
    replicas = requests.get(url, timeout=10).json()["replicas"]
    assert [r["url"] for r in replicas] == [worker.url]
    # The admin API wants its own token, not the internal one.
    assert (
        requests.get(
            f"{stack.registry_url}/admin/keys", headers=stack.internal_headers(), timeout=10
        ).status_code
        == 401
    )
    assert (
        requests.get(
            f"{stack.registry_url}/admin/keys", headers=stack.admin_headers(), timeout=10
        ).status_code
        == 200
    )


def test_worker_routes_need_the_credential(stack: Stack, null_worker: StartWorker) -> None:
    worker = null_worker("trust-worker", "--tokens", "2")
    body = {"request_id": f"t-{uuid.uuid4().hex[:8]}", "prompt": "hello", "params": {"max_tokens": 2}}
    for path, payload in (("/generate", body), ("/tokenize", {"prompt": "hi"}), ("/cancel/x", None)):
        refused = requests.post(f"{worker.url}{path}", json=payload, timeout=10)
        assert refused.status_code == 401, path
        wrong = requests.post(
            f"{worker.url}{path}", json=payload, headers={"Authorization": "Bearer no"}, timeout=10
        )
        assert wrong.status_code == 401, path
    assert (
        requests.post(f"{worker.url}/generate", json=body, headers=worker.headers, timeout=10).status_code
        == 200
    )
    for probe in ("/healthz", "/readyz", "/info"):
        assert requests.get(f"{worker.url}{probe}", timeout=10).status_code == 200
    # The router holds the credential: the model answers through it.
    through = requests.post(
        f"{stack.openai_url}/completions",
        json={"model": "trust-worker", "prompt": "hi", "max_tokens": 2},
        timeout=10,
    )
    assert through.status_code == 200


def test_redis_needs_its_password(stack: Stack) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=stack.redis.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.get("anything")
    anonymous.close()
    assert stack.redis.client().ping()


def test_failures_reach_clients_without_internal_addresses(fresh_stack: Stack) -> None:
    stack = fresh_stack
    worker = stack.null_worker("trust-fail", "--tokens", "2")
    body = {"model": "trust-fail", "prompt": "hi", "max_tokens": 2}
    assert requests.post(f"{stack.openai_url}/completions", json=body, timeout=10).status_code == 200
    worker.kill()
    # The registry still lists the dead replica until its lease ends: the router cannot reach it.
    gone = requests.post(f"{stack.openai_url}/completions", json=body, timeout=30)
    assert gone.status_code == 503
    message = gone.json()["error"]["message"]
    assert "could be reached" in message and f"request id {gone.headers['X-Request-Id']}" in message
    assert worker.url.split("//")[1] not in message
    assert stack.registry is not None
    stack.registry.stop()
    # Once the model cache is stale, the registry's absence shows; its address does not.
    deadline_status = None
    for _ in range(100):
        response = requests.get(f"{stack.openai_url}/models", timeout=10)
        if response.status_code == 503:
            deadline_status = response
            break
        threading.Event().wait(0.1)
    assert deadline_status is not None, "the router never noticed the registry was gone"
    message = deadline_status.json()["error"]["message"]
    assert "registry" in message and "request id" in message
    assert stack.registry_url.split("//")[1] not in message
    # (The no_internal_addresses fixture checks every body above as well.)


class _Leaky(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"error": {"message": "cannot reach redis://10.99.99.99:6379"}}'
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def leaky_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Leaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    WATCH.public(url)
    WATCH.internal("10.99.99.99:6379")
    yield url
    WATCH.forget("10.99.99.99:6379")
    WATCH.public_netlocs.discard(url.split("//")[1])
    server.shutdown()
    server.server_close()


def test_the_watch_catches_a_leak_through_each_client(leaky_server: str) -> None:
    requests.get(leaky_server, timeout=10)
    with httpx.Client() as client:
        client.get(leaky_server)
    with requests.get(leaky_server, stream=True, timeout=10) as streamed:
        next(streamed.iter_content(chunk_size=4096))
    found = WATCH.take()
    assert len(found) == 3 and {leak.found for leak in found} == {"10.99.99.99:6379"}
    # A longer port is not the watched one.
    WATCH.internal("10.99.99.99:637")
    try:
        requests.get(leaky_server, timeout=10)
        assert {leak.found for leak in WATCH.take()} == {"10.99.99.99:6379"}
    finally:
        WATCH.forget("10.99.99.99:637")
