"""gunicorn settings: ``gunicorn --config python:infergate_registry.gunicorn_conf
infergate_registry.wsgi:app``. ``INFERGATE_BIND`` (default 0.0.0.0:8090),
``INFERGATE_WORKERS`` (default 2) and ``INFERGATE_THREADS`` (default 8)."""

from __future__ import annotations

import os

bind = os.environ.get("INFERGATE_BIND", "0.0.0.0:8090")
worker_class = "gthread"
workers = int(os.environ.get("INFERGATE_WORKERS", "2"))
threads = int(os.environ.get("INFERGATE_THREADS", "8"))
# Workers heartbeat every second; a stalled request must not pile them up.
timeout = 30
graceful_timeout = 5
keepalive = 30
# The app (and its Redis pool and sweeper thread) is built in each worker after the fork.
preload_app = False
# The control socket's default path is shared by every gunicorn of the user, so
# the router and the registry on one machine would take it from each other.
control_socket_disable = True
