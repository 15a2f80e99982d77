"""The KEDA trigger the chart renders, run by a real Prometheus against real
routers: two router "pods" (two gunicorn processes each) scraped as the
Prometheus Operator's ServiceMonitor would label them, plus one scraped as
another release. The chart's query counts this release's in-flight streams
across pods (one series per pod, not per process), follows tokens per second
while streams run, and falls back to zero when they end.

Prometheus is Debian's build (ci/prometheus.sh); the query text comes from
``helm template`` of charts/infergate, so a change in either breaks this.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from router_processes import Process, Stack, free_port
from sse_client import events

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "serving"
RELEASE = "infergate"
MODEL = "kedaslow"
STREAMS = 6
TOKENS = 50


def tool(script: str) -> str:
    done = subprocess.run(["bash", str(ROOT / "ci" / script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def rendered_query(metric: str, **keda: str) -> tuple[str, str]:
    """(query, threshold) of the ScaledObject the chart renders for MODEL."""
    values = {"models": {MODEL: {"modelId": "org/m", "keda": {
        "enabled": True, "maxReplicaCount": 4, "prometheusAddress": "http://prometheus:9090",
        "metric": metric, **keda}}}}  # fmt: skip
    done = subprocess.run(
        [tool("helm.sh"), "template", RELEASE, str(ROOT / "charts" / "infergate"), "--namespace", NAMESPACE,
         "--api-versions", "keda.sh/v1alpha1", "--set-json", f"models={json.dumps(values['models'])}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    scaled = next(d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    return trigger["metadata"]["query"], trigger["metadata"]["threshold"]


class Prometheus:
    def __init__(self, workdir: Path, targets: list[tuple[int, dict[str, str]]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        groups = [{"targets": [f"127.0.0.1:{port}"], "labels": labels} for port, labels in targets]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "routers", "static_configs": groups}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = Process(
            "prometheus",
            [tool("prometheus.sh"), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            workdir / "prometheus.log",
        )  # fmt: skip
        self.process.wait_until(lambda: requests.get(f"{self.url}/-/ready", timeout=2).ok, "ready", 60)

    def value(self, query: str) -> float | None:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=5)
        assert response.status_code == 200, response.text
        result = response.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, query: str, check: object, what: str, timeout_s: float = 30) -> float | None:
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            seen = self.value(query)
            if check(seen):  # type: ignore[operator]
                return seen
            time.sleep(0.25)
        raise AssertionError(f"{what}: {query} = {seen} after {timeout_s}s\n{self.process.log_tail()}")


@pytest.fixture(scope="module")
def cluster(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, list[str]]]:
    stack.start_null_worker(MODEL, tokens=TOKENS, interval_ms=100)
    routers = []
    for _ in range(2):
        metrics_port = free_port()
        process, url = stack.start_router(
            INFERGATE_WORKERS="2", INFERGATE_METRICS_BIND=f"127.0.0.1:{metrics_port}"
        )
        routers.append((process, url, metrics_port))
    service = f"{RELEASE}-router"
    targets = [
        (port, {"namespace": NAMESPACE, "service": service, "pod": f"router-{index}"})
        for index, (_, _, port) in enumerate(routers)
    ]
    # The first router again, as another release's Service: the query must not count it.
    targets.append((routers[0][2], {"namespace": NAMESPACE, "service": "other-router", "pod": "other"}))
    prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), targets)
    try:
        prometheus.wait_for("count(up == 1)", lambda v: v == 3, "every target scraped")
        yield prometheus, [url for _, url, _ in routers]
    finally:
        prometheus.process.stop()
        for process, _, _ in routers:
            process.stop()


def test_in_flight_and_tokens_per_second_queries_follow_the_load(
    cluster: tuple[Prometheus, list[str]],
) -> None:
    prometheus, routers = cluster
    in_flight, threshold = rendered_query("inFlight")
    assert f'namespace="{NAMESPACE}"' in in_flight and f'service="{RELEASE}-router"' in in_flight
    assert float(threshold) > 0
    tokens_query, _ = rendered_query("outputTokensPerSecond", window="5s")
    assert (
        tokens_query.startswith("sum(rate(infergate_router_output_tokens_total{") and "[5s]" in tokens_query
    )

    finished: list[int] = []

    def stream(router: str) -> None:
        body = {"model": MODEL, "prompt": "x", "max_tokens": TOKENS, "stream": True}
        response = requests.post(f"{router}/openai/v1/completions", json=body, stream=True, timeout=60)
        assert response.status_code == 200
        finished.append(len(list(events(response))))

    threads = [threading.Thread(target=stream, args=(routers[i % 2],)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    try:
        # Every stream counted once: both pods, no process counted twice, the other release left out.
        prometheus.wait_for(in_flight, lambda v: v == STREAMS, "in-flight streams of the release")
        per_pod = f'count(infergate_router_requests_in_flight{{service="{RELEASE}-router",model="{MODEL}"}})'
        assert prometheus.value(per_pod) == 2
        rate = prometheus.wait_for(tokens_query, lambda v: v is not None and v > 5, "tokens per second")
        assert rate is not None and rate < STREAMS * 10 * 3
    finally:
        for thread in threads:
            thread.join(timeout=60)
    assert len(finished) == STREAMS
    prometheus.wait_for(in_flight, lambda v: v == 0, "in flight after the streams ended")
    prometheus.wait_for(tokens_query, lambda v: v == 0, "tokens per second once idle", timeout_s=30)
