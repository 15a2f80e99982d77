"""gunicorn settings of the router:
``gunicorn --config python:infergate_router.gunicorn_conf infergate_router.wsgi:app``.

gevent workers: each holds hundreds of open SSE streams as greenlets. The
worker class is :class:`infergate_router.http_server.RouterWorker`: gunicorn's
``gevent_pywsgi`` (gevent's own HTTP server inside gunicorn's gevent worker)
rather than ``gevent`` (gunicorn's parser), since it writes a response's
headers and body in one send and parses a request for less (a request costs
about a quarter less router CPU, ``bench/scenarios/overhead.py``), with
request headers read without the e-mail parser, writes offered to the
socket before gevent's ``sendall``, and no access-log record built while
the access log is off.
From the environment:

- ``INFERGATE_BIND`` (default ``0.0.0.0:8080``): the API.
- ``INFERGATE_WORKERS`` (default: one process per CPU the container is
  given, see :mod:`infergate_common.cpus`): gunicorn worker processes.
- ``INFERGATE_METRICS_BIND`` (``host:port``; empty: no metrics listener):
  Prometheus metrics, served by the master process on their own port (never
  the API's, so an Ingress routing the API never exposes them). The master
  sums what every worker process wrote (``prometheus_client``'s
  multiprocess mode), so each scrape sees one series per pod.
- ``PROMETHEUS_MULTIPROC_DIR``: where the workers write their values; a
  fresh private folder when unset. Emptied at start: values of a previous
  run must not be added to this one's.
- ``INFERGATE_DRAIN_S`` (default 30): after SIGTERM, how long open streams
  may run before they end with an error event (``RouterServices.begin_drain``);
  gunicorn's ``graceful_timeout`` is 5 s more, and the chart gives the pod a
  longer ``terminationGracePeriodSeconds`` still.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from infergate_common.cpus import available_cpus

_metrics_dir = Path(
    os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="infergate-router-metrics-")
)
_metrics_dir.mkdir(parents=True, exist_ok=True)
for _stale in _metrics_dir.glob("*.db"):
    _stale.unlink()
# Before any worker imports prometheus_client: it picks its value store at import.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)

bind = os.environ.get("INFERGATE_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("INFERGATE_WORKERS") or available_cpus())
worker_class = "infergate_router.http_server.RouterWorker"
# Open connections per worker: every streaming client holds one for its
# whole generation.
worker_connections = int(os.environ.get("INFERGATE_WORKER_CONNECTIONS", "2000"))
# gevent workers notify the arbiter from their own loop, so a long stream
# never trips this; it only catches a blocked worker.
timeout = 60
# SIGTERM: open streams get INFERGATE_DRAIN_S to finish (then an error
# event); gunicorn waits a little longer before it stops the process.
graceful_timeout = int(float(os.environ.get("INFERGATE_DRAIN_S", "30"))) + 5
keepalive = 5
# The app logs one JSON line per request itself.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("INFERGATE_LOG_LEVEL", "info").lower()
# Clients send long prompts: let request lines and headers be generous.
limit_request_line = 8190
# gunicorn's control socket has one default path per user, so the router and
# the registry on one machine would take it from each other.
control_socket_disable = True


def post_worker_init(worker: Any) -> None:
    """Drain on SIGTERM: gunicorn stops accepting, and the app ends its open
    streams cleanly once the drain time is over (see ``RouterServices.begin_drain``).
    Then what is loaded is frozen out of the cyclic collector's reach."""
    import gc
    import signal

    import gevent

    from infergate_router.services import EXTENSION

    stop_accepting = worker.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        services = getattr(worker.wsgi, "extensions", {}).get(EXTENSION)
        if services is not None:
            # The handler runs in gevent's loop, where nothing may block:
            # the drain starts in a greenlet of its own.
            gevent.spawn(services.begin_drain)
        stop_accepting(sig, frame)

    worker.handle_exit = handle_exit
    # gunicorn bound its handler before this hook ran.
    signal.signal(signal.SIGTERM, handle_exit)
    # What is loaded by now (the app, its modules) lives as long as the
    # process: the cyclic collector need not walk it again on every full pass.
    gc.collect()
    gc.freeze()


def worker_exit(server: Any, worker: Any) -> None:
    """A worker on its way out sends Redis the tokens it counted itself and
    gives back what is left of its blocks of rate limits (see
    ``auth/reservations.py``), instead of holding them until they age out."""
    from infergate_router.services import EXTENSION

    services = getattr(worker.wsgi, "extensions", {}).get(EXTENSION)
    if services is not None:
        services.limiter.flush()


def _split_bind(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "0.0.0.0", int(port)


def when_ready(server: Any) -> None:
    """Serve the pod's metrics from the master, once it listens."""
    metrics_bind = os.environ.get("INFERGATE_METRICS_BIND", "")
    if not metrics_bind:
        return
    from prometheus_client import start_http_server

    from infergate_router.metrics import pod_registry

    host, port = _split_bind(metrics_bind)
    start_http_server(port, addr=host, registry=pod_registry())
    server.log.info("metrics on http://%s:%d/metrics", host, port)


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's gauges leave the pod's sums (its counters stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
