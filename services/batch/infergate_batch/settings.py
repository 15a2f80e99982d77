"""The batch service's settings: one pydantic model read from ``INFERGATE_*``
environment variables by :func:`infergate_common.settings.load_settings`.

The router (which serves the files and batches routes) and the Celery
workers (which run the lines) read the same settings, so they agree on
Redis, the storage and the limits. The names shared with the router
(``redis_url``, ``stream_prefix``) read the same variables.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from infergate_common.settings import load_settings
from infergate_common.streams import DEFAULT_PREFIX


class BatchSettings(BaseModel):
    # False: the router answers 404 on /files and /batches (no storage configured).
    batch_enabled: bool = True
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The Celery broker; empty: ``redis_url``.
    batch_broker_url: str = ""
    stream_prefix: str = DEFAULT_PREFIX
    # Where uploaded and produced files live: a local folder (a PVC in the
    # chart) or an fsspec URL such as ``s3://bucket/prefix``.
    batch_storage_url: str = "var/batch-files"
    # fsspec options as JSON (endpoint_url, key, secret, ...); credentials
    # usually come from the environment (AWS_ACCESS_KEY_ID, ...) instead.
    batch_storage_options: str = "{}"

    # Upload limits (OpenAI's: 50,000 requests, 200 MB per file).
    batch_max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    batch_max_lines: int = Field(50_000, ge=1)
    # A line whose request body is larger goes to the error file.
    batch_max_line_bytes: int = Field(1024 * 1024, ge=256)
    # Longest completion window a batch may ask for ("24h" is OpenAI's only one).
    batch_max_window_s: int = Field(7 * 24 * 3600, ge=1)

    # Lines per Celery task, and lines of one task run at once.
    batch_chunk_lines: int = Field(16, ge=1)
    batch_chunk_threads: int = Field(8, ge=1)
    # Batch lines in flight per ready replica of a model, across every batch
    # worker (interactive traffic keeps the rest of the replica).
    batch_lines_per_replica: int = Field(2, ge=1)
    # A fixed cap per model instead (0: per replica as above).
    batch_model_concurrency: int = Field(0, ge=0)
    # Each interactive request in flight on the model (as its routers report
    # it) lowers the cap by one, down to this floor (0: batches pause while
    # interactive requests fill their share; 1: a batch always moves on).
    batch_min_model_concurrency: int = Field(0, ge=0)
    # A worker that died holding a model slot frees it after this long.
    batch_slot_lease_s: float = Field(30.0, gt=0)
    # A line answered 429/502/503 is retried this many times, with backoff.
    batch_line_retries: int = Field(6, ge=0)
    batch_retry_backoff_s: float = Field(0.5, gt=0)

    # Celery: an unacknowledged chunk goes back to the queue after this long
    # (a worker that died mid-chunk); longer than the longest chunk.
    batch_visibility_timeout_s: int = Field(2 * 3600, ge=1)
    # How often a batch worker looks for batches past their window or done.
    batch_sweep_interval_s: float = Field(5.0, gt=0)
    # A running batch that has not moved for this long has its tasks looked
    # for in the broker; one missing there (lost) is sent again.
    batch_lost_task_after_s: float = Field(60.0, gt=0)


def settings_from_env() -> BatchSettings:
    return load_settings(BatchSettings)
