"""The per-process parts of the router, built once by ``create_app`` and
reached from views through :func:`services` (the request scope's, see
:mod:`.request_scope`). Nothing here connects to anything until the first
request needs it. The module does not import Flask, so the batch workers build the same
parts with :meth:`RouterServices.build` and dispatch without the app."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis

from . import redis_connections, request_scope
from .auth.keystore import AdminKeys, KeysFile, KeyStore
from .auth.limiter import RateLimiter
from .dispatch import Dispatcher
from .load_report import LoadReporter
from .metrics import RouterMetrics
from .model_directory import ModelDirectory
from .readiness import Readiness
from .registry_changes import RegistryChangeListener
from .replica_choice import InFlight
from .settings import RouterSettings
from .stream_reader import StreamReader
from .worker_client import WorkerClient

EXTENSION = "infergate_router"

log = logging.getLogger("infergate_router")


@dataclass
class RouterServices:
    settings: RouterSettings
    directory: ModelDirectory
    changes: RegistryChangeListener
    inflight: InFlight
    workers: WorkerClient
    reader: StreamReader
    dispatcher: Dispatcher
    metrics: RouterMetrics
    readiness: Readiness
    keys: KeyStore
    limiter: RateLimiter
    load: LoadReporter

    @classmethod
    def build(cls, settings: RouterSettings) -> RouterServices:
        directory = ModelDirectory(
            settings.registry_url, settings.registry_cache_ttl_s, settings.connect_timeout_s
        )
        # Keys, limits and load reports share one small pool; nothing connects before the first call.
        auth_redis = redis.Redis(
            connection_pool=redis_connections.blocking_pool(
                settings.redis_url,
                max_connections=32,
                timeout=settings.connect_timeout_s + 2,
                socket_connect_timeout=settings.connect_timeout_s,
                socket_timeout=settings.connect_timeout_s + 2,
            )
        )
        admin_keys = (
            AdminKeys(auth_redis, settings.stream_prefix, settings.key_cache_ttl_s)
            if settings.admin_keys
            else None
        )
        keys = KeyStore(
            settings.api_keys,
            KeysFile(settings.api_keys_file) if settings.api_keys_file else None,
            admin_keys,
            settings.require_api_key,
        )
        limiter = RateLimiter(
            auth_redis,
            settings.stream_prefix,
            lease_s=settings.request_timeout_s + 60,
            fail_open=settings.rate_limit_failure == "open",
        )

        def on_change() -> None:
            directory.invalidate()
            keys.invalidate()

        changes = RegistryChangeListener(settings.redis_url, settings.stream_prefix, on_change)
        metrics = RouterMetrics()
        inflight = InFlight(on_change=metrics.in_flight)
        workers = WorkerClient(
            settings.connect_timeout_s,
            settings.request_timeout_s,
            internal_token=settings.internal_token,
            lone_call_poll_us=settings.lone_call_poll_us,
            in_flight=inflight.total,
        )
        reader = StreamReader(
            settings.redis_url, settings.stream_prefix, settings.stream_block_ms, settings.connect_timeout_s
        )
        dispatcher = Dispatcher(
            inflight,
            workers,
            reader,
            settings.stream_prefix,
            settings.heartbeat_deadline_s,
            settings.queue_wait_s,
        )
        readiness = Readiness(reader, directory)
        load = LoadReporter(auth_redis, settings.stream_prefix, inflight, settings.load_report_interval_s)
        return cls(
            settings,
            directory,
            changes,
            inflight,
            workers,
            reader,
            dispatcher,
            metrics,
            readiness,
            keys,
            limiter,
            load,
        )

    def begin_drain(self) -> None:
        """SIGTERM: readiness turns 503; open streams may run for
        ``drain_s``, then end with an error event (their generations are
        cancelled as their responses close)."""
        if self.readiness.draining.is_set():
            return
        self.readiness.draining.set()
        log.info("draining", extra={"open_streams": self.reader.active(), "drain_s": self.settings.drain_s})

        def end_streams() -> None:
            time.sleep(self.settings.drain_s)
            ended = self.dispatcher.abort_open_streams(
                "the router is shutting down; retry the request (resume with Last-Event-ID where supported)"
            )
            log.info("drain grace over", extra={"streams_ended": ended})

        threading.Thread(target=end_streams, name="drain", daemon=True).start()

    def close(self) -> None:
        self.changes.stop()
        self.load.stop()
        self.reader.stop()
        self.workers.close()
        self.directory.close()
        # Tokens counted here and blocks of limits not used up go back first.
        self.limiter.flush()
        self.limiter.client.connection_pool.disconnect()


def services() -> RouterServices:
    """The parts of the process serving the current request."""
    return request_scope.current().services
