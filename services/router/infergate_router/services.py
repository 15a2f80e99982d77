"""The per-process parts of the router, built once by ``create_app`` and
reached from views through :func:`services`. Nothing here connects to
anything until the first request needs it."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

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

    @classmethod
    def build(cls, settings: RouterSettings) -> RouterServices:
        directory = ModelDirectory(
            settings.registry_url, settings.registry_cache_ttl_s, settings.connect_timeout_s
        )
        changes = RegistryChangeListener(settings.redis_url, settings.stream_prefix, directory.invalidate)
        metrics = RouterMetrics()
        inflight = InFlight(on_change=metrics.in_flight)
        workers = WorkerClient(settings.connect_timeout_s, settings.request_timeout_s)
        reader = StreamReader(
            settings.redis_url, settings.stream_prefix, settings.stream_block_ms, settings.connect_timeout_s
        )
        dispatcher = Dispatcher(
            inflight, workers, reader, settings.stream_prefix, settings.heartbeat_deadline_s
        )
        return cls(settings, directory, changes, inflight, workers, reader, dispatcher, metrics)

    def close(self) -> None:
        self.changes.stop()
        self.reader.stop()
        self.workers.close()
        self.directory.close()


def services() -> RouterServices:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]
