"""Run a worker: serve the internal API, load the engine in the background,
register with the registry once ready and keep heartbeating.

Both workers call :func:`run_worker` from their ``__main__``; the settings
they share are :class:`WorkerServerSettings`.

On SIGTERM the worker drains: ``/readyz`` turns 503 and the replica leaves
the registry at once, new requests get 503 ``replica_draining`` (the router
sends them to another replica), running generations have ``drain_s`` to
finish, then what is left is cancelled (its clients get an error event from
the router) and the process exits. SIGINT drains with no grace; a second
signal stops at once.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import requests
from pydantic import BaseModel, Field

from . import worker_metrics
from .admission import Admission
from .engine import Engine
from .internal_auth import auth_header, warn_if_open
from .periodic import run_every
from .registry_api import ReplicaRegistration, RoutingPolicy
from .streams import DEFAULT_PREFIX, stream_key
from .worker_app import create_worker_app, readiness

log = logging.getLogger(__name__)


class WorkerServerSettings(BaseModel):
    """What every worker needs besides its model."""

    host: str = "0.0.0.0"
    port: int = Field(8100, ge=1, le=65535)
    # The URL routers use to reach this replica (default http://127.0.0.1:<port>).
    advertise_url: str | None = None
    registry_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    stream_prefix: str = DEFAULT_PREFIX
    heartbeat_interval_s: float = Field(1.0, gt=0)
    replica_ttl_s: float = Field(5.0, gt=0)
    domains: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    restricted: bool = False
    # How routers choose among this model's replicas (registry_api.RoutingPolicy);
    # None leaves the registry's record as it is.
    routing_policy: RoutingPolicy | None = None
    threads: int = Field(64, ge=1)
    # Open connections waitress accepts (its default, 100, is below what
    # several router processes keep pooled; past it new ones hang unserved).
    connection_limit: int = Field(2000, ge=1)
    # Requests admitted at once, running and waiting (None: the engine's
    # default); past it the worker answers 503 and routers try another replica.
    capacity: int | None = Field(None, ge=1)
    # On SIGTERM, how long running generations may take to finish before
    # they are cancelled and the process exits.
    drain_s: float = Field(30.0, ge=0)
    # A second port that answers only /healthz and /readyz from its own
    # thread, so probes stay green while every request thread is busy.
    health_port: int | None = Field(None, ge=1, le=65535)
    # host:port of the Prometheus metrics (worker_metrics); empty: not served.
    metrics_bind: str = ""
    # Shared with the registry and the routers (INFERGATE_INTERNAL_TOKEN): sent
    # when registering, required from callers of every route but the probes.
    internal_token: str = Field("", repr=False)

    def replica_url(self) -> str:
        return self.advertise_url or f"http://127.0.0.1:{self.port}"


class Registration:
    """Registers the replica and renews it until stopped."""

    def __init__(self, engine: Engine, settings: WorkerServerSettings, capacity: int | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.capacity = capacity
        self.stopped = threading.Event()
        self.session = requests.Session()
        self.thread: threading.Thread | None = None
        self.session.headers.update(auth_header(settings.internal_token))

    def _url(self) -> str:
        name = self.engine.info().name
        return f"{self.settings.registry_url}/registry/models/{name}/replicas"

    def register_once(self) -> None:
        ok, _ = self.engine.ready()
        body = ReplicaRegistration(
            url=self.settings.replica_url(),
            info=self.engine.info().model_copy(update={"capacity": self.capacity}),
            ready=ok,
            ttl_s=self.settings.replica_ttl_s,
            domains=self.settings.domains or None,
            hosts=self.settings.hosts or None,
            restricted=self.settings.restricted or None,
            routing_policy=self.settings.routing_policy,
        )
        response = self.session.post(
            self._url(),
            data=body.model_dump_json(),
            timeout=5,
            headers={"Content-Type": "application/json"},
        )
        response.raise_for_status()

    def run(self) -> None:
        run_every(
            self.settings.heartbeat_interval_s,
            self.stopped,
            self.register_once,
            (requests.RequestException,),
            log,
            "registry heartbeat failed: %s",
            "registry reachable again",
            step_first=True,
        )

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="registry-heartbeat", daemon=True)
        self.thread.start()

    def deregister(self) -> None:
        self.stopped.set()
        # A heartbeat in flight would register the replica again after the delete.
        if self.thread is not None:
            self.thread.join(timeout=6)
        with contextlib.suppress(requests.RequestException):
            self.session.delete(self._url(), params={"url": self.settings.replica_url()}, timeout=2)


def _load(engine: Engine, registration: Registration | None, failed: threading.Event) -> None:
    started = time.monotonic()
    try:
        engine.load()
    except Exception:
        log.exception("engine failed to load")
        failed.set()
        return
    log.info("engine ready", extra={"load_s": round(time.monotonic() - started, 3)})
    if registration is not None:
        registration.start()


def _serve_health(engine: Engine, admission: Admission, host: str, port: int) -> http.server.HTTPServer:
    """``/healthz`` and ``/readyz`` on their own port and thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status: int
            body: dict[str, Any]
            if self.path == "/healthz":
                status, body = 200, {"status": "ok"}
            elif self.path == "/readyz":
                ok, reason = readiness(engine, admission)
                status, body = (200, {"ready": True}) if ok else (503, {"ready": False, "reason": reason})
            else:
                status, body = 404, {"error": "no such route"}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


class Drain:
    """The worker's shutdown: stop taking requests, leave the registry, let
    running work finish within the grace, cancel the rest, close."""

    def __init__(
        self,
        engine: Engine,
        admission: Admission,
        registration: Registration | None,
        close: Any,
    ) -> None:
        self.engine = engine
        self.admission = admission
        self.registration = registration
        self.close = close
        self.started = threading.Event()

    def begin(self, grace_s: float) -> None:
        if self.started.is_set():
            log.info("second stop signal: stopping now")
            self.close()
            return
        self.started.set()
        threading.Thread(target=self._run, args=(grace_s,), name="drain", daemon=True).start()

    def _run(self, grace_s: float) -> None:
        self.admission.draining.set()
        held = self.admission.held()
        log.info("draining", extra={"held": held, "grace_s": grace_s})
        if self.registration is not None:
            self.registration.deregister()
        if not self.admission.wait_idle(grace_s):
            left = sorted(self.admission.outstanding())
            log.warning("drain grace over: cancelling what is left", extra={"cancelled": len(left)})
            for request_id in left:
                with contextlib.suppress(Exception):
                    self.engine.cancel(request_id)
            # The engine writes the last entry of each cancelled stream.
            self.admission.wait_idle(5.0)
        log.info("drained")
        self.close()


def run_worker(engine: Engine, settings: WorkerServerSettings) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    from waitress.server import create_server

    admission = Admission(engine, settings.capacity or engine.default_capacity())
    app = create_worker_app(
        engine, lambda rid: stream_key(settings.stream_prefix, rid), admission, settings.internal_token
    )
    warn_if_open(log, "worker", settings.internal_token)
    server = create_server(
        app,
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        connection_limit=settings.connection_limit,
        channel_timeout=3600,
        ident="infergate-worker",
        # select() fails on descriptors above 1024, which a burst of
        # connections reaches: poll() has no such bound.
        asyncore_use_poll=True,
    )
    if settings.metrics_bind:
        worker_metrics.serve(settings.metrics_bind)
    registration = Registration(engine, settings, admission.capacity) if settings.registry_url else None
    health = None
    if settings.health_port:
        health = _serve_health(engine, admission, settings.host, settings.health_port)
    failed = threading.Event()
    loader = threading.Thread(
        target=_load, args=(engine, registration, failed), name="engine-load", daemon=True
    )
    loader.start()
    stopping = threading.Event()

    def leave_loop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    def stop_serving() -> None:
        # waitress's loop runs in this (the main) thread and keeps going while
        # router connections stay open: leave it from here, as a signal.
        os.kill(os.getpid(), signal.SIGUSR2)

    signal.signal(signal.SIGUSR2, leave_loop)
    drain = Drain(engine, admission, registration, stop_serving)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping on signal %s", signum)
        stopping.set()
        drain.begin(settings.drain_s if signum == signal.SIGTERM else 0.0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watch_failure() -> None:
        failed.wait()
        stop_serving()

    threading.Thread(target=watch_failure, daemon=True).start()
    log.info("worker listening", extra={"url": settings.replica_url()})
    crashed = False
    try:
        server.run()
    except SystemExit:
        pass
    except (OSError, ValueError):
        # waitress raises when its sockets close under it during shutdown;
        # anywhere else the serving loop died, which must not pass silently.
        if not stopping.is_set() and not failed.is_set():
            log.exception("the HTTP server stopped unexpectedly")
            crashed = True
    finally:
        if registration is not None:
            registration.deregister()
        if health is not None:
            health.shutdown()
        engine.shutdown()
    return 1 if failed.is_set() or crashed else 0
