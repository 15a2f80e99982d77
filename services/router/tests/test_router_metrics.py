"""The router's Prometheus metrics under real gunicorn+gevent with several
worker processes: one consistent series per pod on the metrics port (the
sum over every process, no per-process label), token counters that move
while a stream runs, and no metrics on the API port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from router_processes import Stack, free_port
from sse_client import events

PROCESSES = 3
REQUESTS = 45


@pytest.fixture(scope="module")
def routed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """(API url, metrics url, multiprocess folder) of a three-process router."""
    stack.start_null_worker("slowmetrics", tokens=20, interval_ms=150)
    metrics_dir = tmp_path_factory.mktemp("router-metrics")
    metrics_port = free_port()
    process, url = stack.start_router(
        INFERGATE_WORKERS=str(PROCESSES),
        INFERGATE_METRICS_BIND=f"127.0.0.1:{metrics_port}",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    process.wait_until(lambda: requests.get(metrics_url, timeout=2).ok, "serving metrics")
    yield url, metrics_url, metrics_dir
    process.stop()


def scrape(metrics_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and labels; a repeated series fails."""
    response = requests.get(metrics_url, timeout=5)
    assert response.status_code == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"series {key} appears twice in one scrape"
            assert "pid" not in sample.labels and "process" not in sample.labels
            samples[key] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_totals_are_summed_over_every_process(routed: tuple[str, str, Path]) -> None:
    url, metrics_url, metrics_dir = routed
    route = "/openai/v1/completions"
    labels = {"route": route, "method": "POST", "status": "200"}
    before = scrape(metrics_url)

    def send(count: int) -> None:
        for _ in range(count):
            # A new connection each time, so the kernel spreads them over the processes.
            with requests.Session() as session:
                body = {"model": "null", "prompt": "x", "max_tokens": 8}
                headers = {"Connection": "close"}
                response = session.post(f"{url}{route}", json=body, headers=headers, timeout=30)
                assert response.status_code == 200, response.text

    # Which process accepts a connection is the kernel's choice: rounds of
    # new connections go on until at least two processes have answered.
    sent = 0
    deadline = time.monotonic() + 60
    while True:
        threads = [threading.Thread(target=send, args=(REQUESTS // 3,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent += REQUESTS // 3 * 3
        writers = {path.name for path in metrics_dir.glob("counter_*.db")}
        if len(writers) >= 2:
            break
        assert time.monotonic() < deadline, f"one process took every connection: {writers}"

    after = scrape(metrics_url)
    assert (
        value(after, "infergate_router_requests_total", **labels)
        - value(before, "infergate_router_requests_total", **labels)
        == sent
    )
    assert (
        value(after, "infergate_router_output_tokens_total", model="null")
        - value(before, "infergate_router_output_tokens_total", model="null")
        == sent * 8
    )
    # Several processes answered, and the scrape still has one series each.
    # Two scrapes in a row agree: nothing depends on which process answers.
    assert scrape(metrics_url) == scrape(metrics_url)


def test_output_tokens_advance_while_a_stream_runs(routed: tuple[str, str, Path]) -> None:
    url, metrics_url, _ = routed
    before = value(scrape(metrics_url), "infergate_router_output_tokens_total", model="slowmetrics")
    body = {"model": "slowmetrics", "prompt": "x", "max_tokens": 20, "stream": True}
    response = requests.post(f"{url}/openai/v1/completions", json=body, stream=True, timeout=30)
    assert response.status_code == 200
    stream = events(response)
    for _ in range(4):
        next(stream)
    during = scrape(metrics_url)
    counted = value(during, "infergate_router_output_tokens_total", model="slowmetrics") - before
    assert 1 <= counted < 20, counted
    assert value(during, "infergate_router_streams_open", model="slowmetrics") == 1
    assert value(during, "infergate_router_requests_in_flight", model="slowmetrics") == 1
    rest = list(stream)
    assert rest[-1] == (None, "[DONE]")
    after = scrape(metrics_url)
    assert value(after, "infergate_router_output_tokens_total", model="slowmetrics") - before == 20
    assert value(after, "infergate_router_streams_open", model="slowmetrics") == 0
    assert value(after, "infergate_router_requests_in_flight", model="slowmetrics") == 0
    assert value(after, "infergate_router_streams_total", model="slowmetrics", outcome="done") >= 1


def test_metrics_are_not_on_the_api_port(routed: tuple[str, str, Path]) -> None:
    url, metrics_url, _ = routed
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 404
    assert (
        requests.get(metrics_url.replace("/metrics", "/openai/v1/models"), timeout=5).text.find('"object"')
        == -1
    )
