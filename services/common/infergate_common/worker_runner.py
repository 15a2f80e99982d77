"""Run a worker: serve the internal API, load the engine in the background,
register with the registry once ready and keep heartbeating.

Both workers call :func:`run_worker` from their ``__main__``; the settings
they share are :class:`WorkerServerSettings`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from types import FrameType

import requests
from pydantic import BaseModel, Field

from .engine import Engine
from .internal_auth import auth_header, warn_if_open
from .registry_api import ReplicaRegistration
from .streams import DEFAULT_PREFIX, stream_key
from .worker_app import create_worker_app

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
    threads: int = Field(64, ge=1)
    # Open connections waitress accepts (its default, 100, is below what
    # several router processes keep pooled; past it new ones hang unserved).
    connection_limit: int = Field(2000, ge=1)
    # Shared with the registry and the routers (INFERGATE_INTERNAL_TOKEN): sent
    # when registering, required from callers of every route but the probes.
    internal_token: str = Field("", repr=False)

    def replica_url(self) -> str:
        return self.advertise_url or f"http://127.0.0.1:{self.port}"


class Registration:
    """Registers the replica and renews it until stopped."""

    def __init__(self, engine: Engine, settings: WorkerServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.stopped = threading.Event()
        self.session = requests.Session()
        self.session.headers.update(auth_header(settings.internal_token))

    def _url(self) -> str:
        name = self.engine.info().name
        return f"{self.settings.registry_url}/registry/models/{name}/replicas"

    def register_once(self) -> None:
        ok, _ = self.engine.ready()
        body = ReplicaRegistration(
            url=self.settings.replica_url(),
            info=self.engine.info(),
            ready=ok,
            ttl_s=self.settings.replica_ttl_s,
            domains=self.settings.domains or None,
            hosts=self.settings.hosts or None,
            restricted=self.settings.restricted or None,
        )
        response = self.session.post(
            self._url(),
            data=body.model_dump_json(),
            timeout=5,
            headers={"Content-Type": "application/json"},
        )
        response.raise_for_status()

    def run(self) -> None:
        logged_failure = False
        while not self.stopped.is_set():
            try:
                self.register_once()
                if logged_failure:
                    log.info("registry reachable again")
                logged_failure = False
            except requests.RequestException as exc:
                if not logged_failure:
                    log.warning("registry heartbeat failed: %s", exc)
                logged_failure = True
            self.stopped.wait(self.settings.heartbeat_interval_s)

    def deregister(self) -> None:
        self.stopped.set()
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
        threading.Thread(target=registration.run, name="registry-heartbeat", daemon=True).start()


def run_worker(engine: Engine, settings: WorkerServerSettings) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    from waitress.server import create_server

    app = create_worker_app(
        engine, lambda rid: stream_key(settings.stream_prefix, rid), settings.internal_token
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
    )
    registration = Registration(engine, settings) if settings.registry_url else None
    failed = threading.Event()
    loader = threading.Thread(
        target=_load, args=(engine, registration, failed), name="engine-load", daemon=True
    )
    loader.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping on signal %s", signum)
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watch_failure() -> None:
        failed.wait()
        server.close()

    threading.Thread(target=watch_failure, daemon=True).start()
    log.info("worker listening", extra={"url": settings.replica_url()})
    try:
        server.run()
    except (OSError, ValueError):
        # waitress raises when its sockets close under it during shutdown.
        pass
    finally:
        if registration is not None:
            registration.deregister()
        engine.shutdown()
    return 1 if failed.is_set() else 0
