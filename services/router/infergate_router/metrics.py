"""Prometheus metrics measured at the router, the same for every backend:
request counts and latency by route, the token metrics KServe's
transformers backend never had (time to first token, time per output
token, prompt and output tokens), and the load gauges autoscaling reads
(requests in flight, streams open).

Everything goes through ``prometheus_client``. Under gunicorn the router
runs in multiprocess mode, as vLLM and every gunicorn app on Prometheus do:
``gunicorn_conf`` points ``PROMETHEUS_MULTIPROC_DIR`` at a private folder
before any worker imports this module, each worker process writes its
values there, and the gunicorn master serves the sum of all of them on the
metrics port (:func:`pod_registry`). So a scrape sees one consistent series
per pod, never one worker's share of it, and no ``pid`` label.

Output tokens are counted as each delta is relayed, not when a stream ends,
so ``rate()`` follows a long generation while it runs.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    """True when values live in files shared by the gunicorn workers."""
    return bool(os.environ.get(MULTIPROC_ENV))


def pod_registry() -> CollectorRegistry:
    """A registry that reads every process's values (multiprocess mode): what the metrics port serves."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class _Children:
    """A labelled metric's children by label values (in the metric's label
    order), each looked up once through ``labels()``, whose keyword handling
    and lock cost every request several microseconds."""

    __slots__ = ("children", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class RouterMetrics:
    """The router's series, named once. Each instance has its own registry,
    so tests can build several apps in one process; in multiprocess mode
    the values also go to the shared files that :func:`pod_registry` reads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "infergate_router_requests",
            "HTTP requests answered, by route template and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self._duration = Histogram(
            "infergate_router_request_duration_seconds",
            "Time to the response headers (a stream's first byte), by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._first_token = Histogram(
            "infergate_router_time_to_first_token_seconds",
            "From the request's arrival to its first generated token (streams).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._per_token = Histogram(
            "infergate_router_time_per_output_token_seconds",
            "Mean time between output tokens after the first, per stream.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self._prompt_tokens = Counter(
            "infergate_router_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self._output_tokens = Counter(
            "infergate_router_output_tokens",
            "Tokens generated, counted as they are relayed.",
            ["model"],
            registry=r,
        )
        self._streams = Counter(
            "infergate_router_streams",
            "Token streams relayed, by how they ended (done, error, timeout, disconnect).",
            ["model", "outcome"],
            registry=r,
        )
        # livesum: the pod's total over its live worker processes.
        self._in_flight = Gauge(
            "infergate_router_requests_in_flight",
            "Worker calls and streams in flight, by model.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self._streams_open = Gauge(
            "infergate_router_streams_open",
            "Token streams being relayed, by model.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )

        # The children, by label values (what every call below uses).
        self._requests_by = _Children(self._requests)
        self._duration_by = _Children(self._duration)
        self._first_token_by = _Children(self._first_token)
        self._per_token_by = _Children(self._per_token)
        self._prompt_tokens_by = _Children(self._prompt_tokens)
        self._output_tokens_by = _Children(self._output_tokens)
        self._streams_by = _Children(self._streams)
        self._in_flight_by = _Children(self._in_flight)
        self._streams_open_by = _Children(self._streams_open)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests_by(route, method, str(status)).inc()
        self._duration_by(route).observe(seconds)

    def first_token(self, model: str, seconds: float) -> None:
        self._first_token_by(model).observe(seconds)

    def per_output_token(self, model: str, seconds: float) -> None:
        self._per_token_by(model).observe(seconds)

    def output_tokens(self, model: str, count: int) -> None:
        """Tokens relayed just now (one delta of a stream, or a whole answer)."""
        if count > 0:
            self._output_tokens_by(model).inc(count)

    def prompt_tokens(self, model: str, count: int) -> None:
        if count > 0:
            self._prompt_tokens_by(model).inc(count)

    def tokens(self, model: str, prompt: int, output: int) -> None:
        """A non-streaming answer's usage."""
        self.prompt_tokens(model, prompt)
        self.output_tokens(model, output)

    def stream_started(self, model: str) -> None:
        self._streams_open_by(model).inc()

    def stream_ended(self, model: str, outcome: str) -> None:
        self._streams_open_by(model).dec()
        self._streams_by(model, outcome).inc()

    def in_flight(self, model: str, delta: int) -> None:
        self._in_flight_by(model).inc(delta)

    def render(self) -> bytes:
        """The exposition: every process's values in multiprocess mode, this instance's otherwise."""
        return generate_latest(pod_registry() if multiprocess_mode() else self.registry)
