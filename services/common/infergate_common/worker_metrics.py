"""Prometheus metrics of a worker process, served on their own port
(``INFERGATE_METRICS_BIND``, never the worker API's).

A worker is one process, so the series live in ``prometheus_client``'s
default registry, which is also where vLLM's ``AsyncLLM`` puts its own
(``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``, ...): serving
that registry re-exports them beside ours. Every series carries ``model``.

- ``infergate_worker_requests_running`` / ``_waiting``: read from the
  engine's scheduler or batcher at scrape time (:func:`track_load`);
- ``infergate_worker_batch_size`` (by ``phase``: encode, prefill, decode)
  and ``infergate_worker_queue_time_seconds`` (arrival to the first batch
  a request joins);
- ``infergate_worker_stream_write_failures_total`` (by ``reason``:
  ``redis``, the entries could not be written in the retry budget;
  ``internal``, an entry could not be encoded or the writer failed):
  streams ended with an ``error`` entry by the stream writer
  (:mod:`.stream_writer`); an alert on it catches a Redis in trouble;
- ``infergate_worker_gpu_unusable``: 1 when the pod was given a GPU that
  this process cannot use (it then runs on the CPU, see :mod:`.gpu_check`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

RUNNING = Gauge(
    "infergate_worker_requests_running", "Requests in the running batch.", ["model"], registry=REGISTRY
)
WAITING = Gauge(
    "infergate_worker_requests_waiting",
    "Requests queued for a batch (admitted, not yet running).",
    ["model"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "infergate_worker_batch_size",
    "Rows (sequences) per batch run, by phase.",
    ["model", "phase"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
QUEUE_TIME = Histogram(
    "infergate_worker_queue_time_seconds",
    "From a request's arrival to the first batch it runs in.",
    ["model"],
    buckets=QUEUE_BUCKETS,
    registry=REGISTRY,
)
STREAM_WRITE_FAILURES = Counter(
    "infergate_worker_stream_write_failures",
    "Token streams the stream writer ended with an error entry, by reason (redis, internal).",
    ["model", "reason"],
    registry=REGISTRY,
)
GPU_UNUSABLE = Gauge(
    "infergate_worker_gpu_unusable",
    "1 when the pod was given a GPU this worker cannot use (it runs on the CPU).",
    ["model"],
    registry=REGISTRY,
)


def track_load(model: str, load: Callable[[], dict[str, int]]) -> None:
    """Read running and waiting counts from ``load()`` at every scrape."""

    def read(key: str) -> Callable[[], float]:
        def value() -> float:
            try:
                return float(load().get(key, 0))
            except Exception:  # a scrape must never fail on an engine that is stopping
                return 0.0

        return value

    RUNNING.labels(model=model).set_function(read("running"))
    WAITING.labels(model=model).set_function(read("waiting"))


def observe_batch(model: str, phase: str, size: int) -> None:
    BATCH_SIZE.labels(model=model, phase=phase).observe(size)


def observe_queue_time(model: str, seconds: float) -> None:
    QUEUE_TIME.labels(model=model).observe(max(0.0, seconds))


def serve(bind: str, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve ``registry`` on ``host:port`` from a daemon thread; returns the port."""
    host, _, port = bind.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    bound = int(server.server_port)
    log.info("metrics listening", extra={"url": f"http://{host or '0.0.0.0'}:{bound}/metrics"})
    return bound
