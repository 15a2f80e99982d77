"""Which HTTP client the router should use to call workers: ``requests``,
``urllib3`` directly, ``geventhttpclient``, or the router's own keep-alive
connections (``infergate_router.worker_connection``), each under gevent (as
in the router), posting the same ``/generate`` body to a benchmark-engine worker at
concurrency 1 and 16. Prints client CPU per request and wall time per
request; the router's worker client follows the cheapest.

    python -m bench.http_clients [--requests 3000]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import requests  # noqa: E402
import urllib3  # noqa: E402

from .stacks import BenchStack  # noqa: E402

BODY = json.dumps(
    {"request_id": "bench", "prompt": "The quick brown fox", "params": {"max_tokens": 16}}
).encode()
HEADERS = {"Content-Type": "application/json"}


def with_requests(url: str) -> Callable[[], bytes]:
    session = requests.Session()
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=64, max_retries=0)
    session.mount("http://", adapter)

    def call() -> bytes:
        return session.post(url, data=BODY, headers=HEADERS, timeout=(5, 30)).content

    return call


def with_urllib3(url: str) -> Callable[[], bytes]:
    pool = urllib3.PoolManager(num_pools=8, maxsize=64, retries=False)
    timeout = urllib3.Timeout(connect=5, read=30)

    def call() -> bytes:
        return pool.request("POST", url, body=BODY, headers=HEADERS, timeout=timeout).data

    return call


def with_geventhttpclient(url: str) -> Callable[[], bytes]:
    from geventhttpclient import HTTPClient

    parts = urlsplit(url)
    client = HTTPClient(
        parts.hostname or "127.0.0.1", parts.port, concurrency=64, connection_timeout=5, network_timeout=30
    )

    def call() -> bytes:
        response = client.post(parts.path, BODY, headers=HEADERS)
        return response.read()  # type: ignore[no-any-return]

    return call


def with_worker_connections(url: str) -> Callable[[], bytes]:
    from infergate_router.worker_connection import WorkerConnections

    parts = urlsplit(url)
    connections = WorkerConnections(parts.hostname or "127.0.0.1", parts.port or 80, 5, 64, HEADERS)

    def call() -> bytes:
        return connections.post(parts.path, BODY, 30)[1]

    return call


CLIENTS = {
    "requests": with_requests,
    "urllib3": with_urllib3,
    "geventhttpclient": with_geventhttpclient,
    "worker_connection": with_worker_connections,
}


def measure(call: Callable[[], bytes], concurrency: int, count: int) -> tuple[float, float]:
    """(client CPU µs per request, wall µs per request)."""
    for _ in range(50):
        call()
    pool = gevent.pool.Pool(concurrency)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        pool.spawn(call)
    pool.join()
    return (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    workdir = Path("/tmp") / f"infergate-http-clients-{int(time.time())}"
    workdir.mkdir(parents=True, exist_ok=True)
    stack = BenchStack(workdir).start(with_router=False)
    try:
        worker = stack.null_worker("null", "--tokens", "16")
        url = f"{worker.url}/generate"
        print(f"{'client':18} {'c':>3} {'cpu us/req':>11} {'wall us/req':>12}")
        for concurrency in (1, 16):
            for name, make in CLIENTS.items():
                cpu, wall = measure(make(url), concurrency, args.requests)
                print(f"{name:18} {concurrency:3} {cpu:11.1f} {wall:12.1f}")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
