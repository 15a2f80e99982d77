"""Backpressure: 1,000 concurrent requests against a model whose only
replica holds 16. Clients get only 200s, or 429 (OpenAI) / 503 (KServe)
with ``Retry-After`` after a short bounded wait; the worker's probes keep
answering fast; memory stays bounded."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from pathlib import Path

import aiohttp
import requests
from conftest import StartWorker
from harness.ports import free_port
from harness.stack import Stack

CAPACITY = 16
CLIENTS = 1000
KSERVE_CLIENTS = 100
TOKENS = 20
TOKEN_INTERVAL_MS = 50  # a stream holds its slot for about a second


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (gunicorn's workers)."""
    total = 0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(child) for child in children)
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


class Prober(threading.Thread):
    """GET the worker's health port every 50 ms and record the latency."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    response = session.get(self.url, timeout=2)
                    if response.status_code != 200:
                        self.failures.append(f"HTTP {response.status_code}")
                except requests.RequestException as exc:
                    self.failures.append(type(exc).__name__)
                self.latencies.append(time.monotonic() - started)
                self.stop.wait(0.05)


async def one_request(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> dict[str, object]:
    async with session.post(url, json=body) as response:
        text = await response.text()
        return {
            "status": response.status,
            "retry_after": response.headers.get("Retry-After"),
            "text": text,
            "content_type": response.headers.get("Content-Type", ""),
        }


async def flood(stack: Stack, model: str) -> list[dict[str, object]]:
    openai_body = {"model": model, "prompt": "go", "max_tokens": TOKENS, "stream": True}
    kserve_body = {"instances": ["go"], "parameters": {"max_tokens": TOKENS, "stream": True}}
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        jobs = [
            one_request(session, f"{stack.openai_url}/completions", openai_body)
            for _ in range(CLIENTS - KSERVE_CLIENTS)
        ]
        jobs += [
            one_request(session, f"{stack.router_url}/v1/models/{model}:predict", kserve_body)
            for _ in range(KSERVE_CLIENTS)
        ]
        return await asyncio.gather(*jobs)


def test_a_thousand_requests_against_sixteen_slots(stack: Stack, null_worker: StartWorker) -> None:
    health_port = free_port()
    worker = null_worker(
        "null-full",
        "--tokens", str(TOKENS),
        "--token_interval_ms", str(TOKEN_INTERVAL_MS),
        "--capacity", str(CAPACITY),
        "--health_port", str(health_port),
    )  # fmt: skip
    info = requests.get(f"{worker.url}/info", timeout=2).json()
    assert info["capacity"] == CAPACITY
    router = stack.router
    assert router is not None
    router_before = rss_kb(router.pid)
    worker_before = rss_kb(worker.process.pid)

    prober = Prober(f"http://127.0.0.1:{health_port}/healthz")
    prober.start()
    started = time.monotonic()
    try:
        results = asyncio.run(flood(stack, "null-full"))
    finally:
        prober.stop.set()
        prober.join()
    elapsed = time.monotonic() - started

    expected = "".join(f"tok{i} " for i in range(TOKENS))
    served = refused = 0
    for index, result in enumerate(results):
        openai = index < CLIENTS - KSERVE_CLIENTS
        status = result["status"]
        if status == 200:
            served += 1
            assert "data: [DONE]" in str(result["text"]) or not openai
            if openai:
                assert str(result["text"]).count("tok") == TOKENS
            continue
        refused += 1
        assert status == (429 if openai else 503), result
        assert result["retry_after"] is not None and int(str(result["retry_after"])) >= 1, result
        assert "application/json" in str(result["content_type"])
        if openai:
            assert '"type":"overloaded_error"' in str(result["text"]).replace(" ", ""), result
        else:
            assert str(result["text"]).startswith('{"error": "'), result
    assert served >= CAPACITY
    assert refused > 0, "nothing was refused: the replica was never full"
    assert expected

    # The probes never queued behind the flood.
    assert not prober.failures, prober.failures[:5]
    latencies = sorted(prober.latencies)
    assert len(latencies) >= 10
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    assert p95 < 0.1, f"health p95 {p95 * 1000:.0f} ms"
    assert latencies[-1] < 1.0

    # Nothing is left behind, and memory did not grow with the flood.
    deadline = time.monotonic() + 10
    while requests.get(f"{worker.url}/info", timeout=2).json()["extra"]["held"] > 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    router_growth_mb = (rss_kb(router.pid) - router_before) / 1024
    worker_growth_mb = (rss_kb(worker.process.pid) - worker_before) / 1024
    print(
        f"\nbackpressure: {served} served, {refused} refused in {elapsed:.1f}s; "
        f"health p50 {statistics.median(latencies) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; router RSS +{router_growth_mb:.1f} MB, "
        f"worker RSS +{worker_growth_mb:.1f} MB"
    )
    assert router_growth_mb < 150
    assert worker_growth_mb < 100
