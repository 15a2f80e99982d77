"""The router's HTTP client to workers against real sockets: a real
null-engine worker, a closed port, and a listener that never answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import requests
from router_processes import Stack, free_port

from infergate_common.errors import GatewayTimeout, InvalidRequest
from infergate_common.worker_api import GenerateRequest, SamplingParams
from infergate_router.worker_client import WorkerClient, WorkerUnreachable, never_sent


def _request(rid: str = "wc-1") -> GenerateRequest:
    return GenerateRequest(request_id=rid, prompt="hello", params=SamplingParams(max_tokens=4))


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """Accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_generate_on_a_real_worker_and_the_worker_error_comes_back(stack: Stack) -> None:
    record = requests.get(f"{stack.registry_url}/registry/models/null", timeout=5).json()
    url = record["replicas"][0]["url"]
    client = WorkerClient(2.0, 10.0)
    try:
        answer = client.generate(url, _request())
        assert answer.request_id == "wc-1"
        assert answer.usage.completion_tokens == 4
        # Many calls reuse pooled connections.
        for i in range(20):
            assert client.generate(url, _request(f"wc-{i}")).choices
        # Neither prompt nor messages: the worker's own validation answers 400.
        bad = GenerateRequest.model_construct(request_id="wc-bad", params=SamplingParams(max_tokens=4))
        with pytest.raises(InvalidRequest):
            client.generate(url, bad)
    finally:
        client.close()


def test_a_closed_port_is_unreachable_by_type() -> None:
    client = WorkerClient(1.0, 5.0)
    with pytest.raises(WorkerUnreachable) as caught:
        client.generate(f"http://127.0.0.1:{free_port()}", _request())
    assert never_sent(caught.value)
    chain = []
    current: BaseException | None = caught.value
    while current is not None:
        chain.append(type(current))
        current = current.__cause__
    assert ConnectionRefusedError in chain


def test_a_worker_that_never_answers_is_a_gateway_timeout(silent_listener: str) -> None:
    client = WorkerClient(1.0, 0.3)
    with pytest.raises(GatewayTimeout):
        client.generate(silent_listener, _request())
    assert not never_sent(GatewayTimeout("x"))


def test_cancel_is_best_effort() -> None:
    client = WorkerClient(0.5, 1.0)
    client.cancel(f"http://127.0.0.1:{free_port()}", "gone")  # no exception
