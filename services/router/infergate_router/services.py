"""The per-process parts of the router, built once by ``create_app`` and
reached from views through :func:`services`. Nothing here connects to
anything until the first request needs it."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app

from .auth.keystore import AdminKeys, KeysFile, KeyStore
from .auth.limiter import RateLimiter
from .dispatch import Dispatcher
from .metrics import RouterMetrics
from .model_directory import ModelDirectory
from .registry_changes import RegistryChangeListener
from .replica_choice import InFlight
from .settings import RouterSettings
from .stream_reader import StreamReader
from .worker_client import WorkerClient

EXTENSION = "infergate_router"


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
    keys: KeyStore
    limiter: RateLimiter

    @classmethod
    def build(cls, settings: RouterSettings) -> RouterServices:
        directory = ModelDirectory(
            settings.registry_url, settings.registry_cache_ttl_s, settings.connect_timeout_s
        )
        # Keys and limits share one small pool; nothing connects before the first call.
        auth_redis = redis.Redis(
            connection_pool=redis.BlockingConnectionPool.from_url(
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
        inflight = InFlight()
        workers = WorkerClient(
            settings.connect_timeout_s, settings.request_timeout_s, internal_token=settings.internal_token
        )
        reader = StreamReader(
            settings.redis_url, settings.stream_prefix, settings.stream_block_ms, settings.connect_timeout_s
        )
        dispatcher = Dispatcher(
            inflight, workers, reader, settings.stream_prefix, settings.heartbeat_deadline_s
        )
        metrics = RouterMetrics()
        metrics.registry.gauge(
            "infergate_router_requests_in_flight", "Worker calls and streams in flight.", inflight.total
        )
        metrics.registry.gauge("infergate_router_streams_open", "Token streams being read.", reader.active)
        return cls(
            settings, directory, changes, inflight, workers, reader, dispatcher, metrics, keys, limiter
        )

    def close(self) -> None:
        self.changes.stop()
        self.reader.stop()
        self.workers.close()
        self.directory.close()
        self.limiter.client.connection_pool.disconnect()


def services() -> RouterServices:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]
