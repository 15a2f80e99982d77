"""The Celery application: Redis as the broker, at-least-once delivery.

* ``task_acks_late``: a chunk is acknowledged only after its lines are
  recorded; a worker that dies mid-chunk leaves it unacknowledged, and the
  broker hands it out again after ``visibility_timeout``.
* ``task_reject_on_worker_lost``: a pool process killed mid-chunk sends it
  back to the queue at once rather than dropping it.
* ``worker_prefetch_multiplier = 1``: a worker holds one chunk per pool
  process, so others pick up the rest.
* A task lost between the queue and ``unacked`` (the transport's one gap)
  is found and sent again by :mod:`infergate_batch.lost_tasks`.

Redelivery means a line can run twice; :class:`infergate_batch.store.BatchStore`
writes its result once. The router only sends tasks (by name): it does
not import the task code.
"""

from __future__ import annotations

from celery import Celery

from .settings import BatchSettings

QUEUE = "infergate-batch"
START = "infergate_batch.start"
RUN_CHUNK = "infergate_batch.run_chunk"
FINALIZE = "infergate_batch.finalize"
# Kombu's hash of the tasks workers hold unacknowledged (its default name).
UNACKED = "unacked"


def key_prefix(settings: BatchSettings) -> str:
    """What the broker's keys start with (kombu's ``global_keyprefix``)."""
    return f"{settings.stream_prefix}:celery:"


def make_celery(settings: BatchSettings) -> Celery:
    app = Celery("infergate_batch", set_as_current=False)
    app.conf.update(
        broker_url=settings.batch_broker_url or settings.redis_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.batch_visibility_timeout_s,
            "global_keyprefix": key_prefix(settings),
            # Look for abandoned chunks often enough for short visibility timeouts.
            "unacked_restore_interval": max(1, min(10, settings.batch_visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1,
            # A worker killed while it held the lock of that look stops every
            # look until the lock expires (kombu's default: 5 minutes).
            "unacked_mutex_expire": max(5, min(300, settings.batch_visibility_timeout_s)),
        },
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Our JSON log lines go to stderr as they are, not through Celery's logger.
        worker_redirect_stdouts=False,
    )
    return app


def send(app: Celery, task: str, *args: object) -> None:
    app.send_task(task, args=list(args), queue=QUEUE)
