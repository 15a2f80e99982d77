"""The Celery application of the batch workers and its tasks.

    celery -A infergate_batch.worker worker --loglevel INFO --concurrency 2
    python -m infergate_batch --concurrency 2      # the same

Building the app connects to nothing; each pool process builds its parts
(Redis, storage, the router's dispatch layer) on its first task. The main
process runs the sweeper (batches past their window, finalizes that never
finished) every ``batch_sweep_interval_s``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from infergate_common.logs import configure_logging

from . import queue, runs
from .objects import Chunk
from .settings import BatchSettings, settings_from_env

log = logging.getLogger("infergate_batch")

settings: BatchSettings = settings_from_env()
app = queue.make_celery(settings)

_parts: runs.BatchParts | None = None
_parts_lock = threading.Lock()


def parts() -> runs.BatchParts:
    global _parts
    with _parts_lock:
        if _parts is None:
            _parts = runs.BatchParts.build(settings, app)
            _parts.router.changes.ensure_started()
        return _parts


@app.task(name=queue.START, bind=True)
def start(self: Task, batch_id: str) -> None:
    runs.start(parts(), batch_id)


@app.task(name=queue.RUN_CHUNK, bind=True)
def run_chunk(self: Task, batch_id: str, chunk: dict[str, Any]) -> None:
    runs.run_chunk(parts(), batch_id, Chunk.model_validate(chunk))


@app.task(name=queue.FINALIZE, bind=True)
def finalize(self: Task, batch_id: str) -> None:
    runs.finalize(parts(), batch_id)


class Sweeper(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="batch-sweeper", daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = settings.batch_sweep_interval_s
        while not self.stopped.wait(interval):
            try:
                sweeper_parts = parts()
                if sweeper_parts.store.sweep_lock(interval * 0.9):
                    runs.sweep(sweeper_parts)
            except Exception:
                log.exception("batch sweep failed")


_sweeper = Sweeper()


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    configure_logging("batch")
    _sweeper.start()
    log.info("batch worker ready")


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _sweeper.stopped.set()
