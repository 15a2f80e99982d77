"""gunicorn settings of the router:
``gunicorn --config python:infergate_router.gunicorn_conf infergate_router.wsgi:app``.

gevent workers: each holds hundreds of open SSE streams as greenlets.
``INFERGATE_BIND`` (default ``0.0.0.0:8080``) and ``INFERGATE_WORKERS``
(default: one process per CPU the container is given, see
:mod:`infergate_common.cpus`) come from the environment.
"""

import os

from infergate_common.cpus import available_cpus

bind = os.environ.get("INFERGATE_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("INFERGATE_WORKERS") or available_cpus())
worker_class = "gevent"
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


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Drain on SIGTERM: gunicorn stops accepting, and the app ends its open
    streams cleanly once the drain time is over (see ``RouterServices.begin_drain``)."""
    import signal

    from infergate_router.services import EXTENSION

    stop_accepting = worker.handle_exit

    def handle_exit(sig, frame):  # type: ignore[no-untyped-def]
        services = getattr(worker.wsgi, "extensions", {}).get(EXTENSION)
        if services is not None:
            services.begin_drain()
        stop_accepting(sig, frame)

    worker.handle_exit = handle_exit
    # gunicorn bound its handler before this hook ran.
    signal.signal(signal.SIGTERM, handle_exit)
