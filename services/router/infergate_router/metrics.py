"""Prometheus metrics measured at the router, the same for every backend:
request counts and latency by route, and the token metrics KServe's
transformers backend never had (time to first token, time per output
token, output tokens).

Hand-rolled text exposition: a few dicts of floats behind one lock, cheap
enough to update on every request. Each gunicorn worker process keeps its
own series and labels them with ``process``; sum over it in queries.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)

Labels = tuple[tuple[str, str], ...]


class Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.process = str(os.getpid())
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, Histogram]] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._gauges: dict[str, tuple[str, object]] = {}

    def _declare(self, name: str, kind: str, help_text: str) -> None:
        self._help.setdefault(name, (kind, help_text))

    def inc(self, name: str, help_text: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._declare(name, "counter", help_text)
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def observe(
        self, name: str, help_text: str, value: float, buckets: Iterable[float], **labels: str
    ) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._declare(name, "histogram", help_text)
            series = self._histograms.setdefault(name, {})
            histogram = series.get(key)
            if histogram is None:
                histogram = series[key] = Histogram(buckets)
            histogram.observe(value)

    def gauge(self, name: str, help_text: str, read: object) -> None:
        """A value read at scrape time from ``read()``."""
        self._gauges[name] = (help_text, read)

    # ---------------------------------------------------------- exposition

    def _labels(self, labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
        items = (("process", self.process), *labels, *extra)
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
        return "{" + inner + "}"

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                kind, help_text = self._help[name]
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                for labels, value in sorted(series.items()):
                    lines.append(f"{name}{self._labels(labels)} {_number(value)}")
            for name, hseries in sorted(self._histograms.items()):
                kind, help_text = self._help[name]
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                for labels, histogram in sorted(hseries.items(), key=lambda item: item[0]):
                    running = 0
                    for bound, count in zip(histogram.buckets, histogram.counts, strict=False):
                        running += count
                        le = (("le", _number(bound)),)
                        lines.append(f"{name}_bucket{self._labels(labels, le)} {running}")
                    inf = (("le", "+Inf"),)
                    lines.append(f"{name}_bucket{self._labels(labels, inf)} {histogram.count}")
                    lines.append(f"{name}_sum{self._labels(labels)} {_number(histogram.sum)}")
                    lines.append(f"{name}_count{self._labels(labels)} {histogram.count}")
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines.append(f"{name}{self._labels(())} {_number(float(read()))}")  # type: ignore[operator]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class RouterMetrics:
    """The router's series, named once."""

    def __init__(self) -> None:
        self.registry = Metrics()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.registry.inc(
            "infergate_router_requests_total",
            "HTTP requests answered, by route template and status.",
            route=route,
            method=method,
            status=str(status),
        )
        self.registry.observe(
            "infergate_router_request_duration_seconds",
            "Time to the response headers (a stream's first byte), by route template.",
            seconds,
            LATENCY_BUCKETS,
            route=route,
        )

    def first_token(self, model: str, seconds: float) -> None:
        self.registry.observe(
            "infergate_router_time_to_first_token_seconds",
            "From the request's arrival to its first generated token (streams).",
            seconds,
            LATENCY_BUCKETS,
            model=model,
        )

    def per_output_token(self, model: str, seconds: float) -> None:
        self.registry.observe(
            "infergate_router_time_per_output_token_seconds",
            "Mean time between output tokens after the first, per stream.",
            seconds,
            TOKEN_BUCKETS,
            model=model,
        )

    def tokens(self, model: str, prompt: int, output: int) -> None:
        self.registry.inc(
            "infergate_router_prompt_tokens_total", "Prompt tokens processed.", prompt, model=model
        )
        self.registry.inc("infergate_router_output_tokens_total", "Tokens generated.", output, model=model)

    def stream_ended(self, model: str, outcome: str) -> None:
        self.registry.inc(
            "infergate_router_streams_total",
            "Token streams relayed, by how they ended (done, error, timeout, disconnect).",
            model=model,
            outcome=outcome,
        )

    def render(self) -> str:
        return self.registry.render()
