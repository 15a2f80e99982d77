"""OpenAI's Batch API under ``/openai/v1``: ``/files`` and ``/batches``.

The router keeps the records (Redis) and the bytes (the batch storage) and
sends ``start`` to the Celery queue; the batch workers
(``services/batch``) run the lines through the same dispatch layer as the
interactive routes. Shapes, statuses and errors are OpenAI's, so the
``openai`` SDK's ``files.create``, ``files.content``, ``batches.create``,
``retrieve``, ``list`` and ``cancel`` work unchanged.

Files and batches carry an owner; until API keys have principals they
belong to the whole deployment (:func:`owner`).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from celery import Celery
from flask import Blueprint, Response, current_app, request
from flask.sansio.blueprints import BlueprintSetupState
from pydantic import BaseModel

from infergate_batch import queue
from infergate_batch.jsonl import copy_validated
from infergate_batch.objects import (
    ENDPOINTS,
    BatchList,
    BatchObject,
    BatchRecord,
    BatchStatus,
    CreateBatch,
    FileDeleted,
    FileList,
    FileObject,
    FileRecord,
    storage_key,
)
from infergate_batch.settings import BatchSettings, settings_from_env
from infergate_batch.storage import FileStorage, open_storage
from infergate_batch.store import BatchStore
from infergate_common.errors import InvalidRequest, NotFound

from ..edge import parse_body

blueprint = Blueprint("openai_batches", __name__, url_prefix="/openai/v1")

EXTENSION = "infergate_batch"
# Room for the multipart framing around the file itself.
MULTIPART_SLACK = 64 * 1024
WINDOW = re.compile(r"^(\d{1,7})([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class BatchAPI:
    settings: BatchSettings
    store: BatchStore
    storage: FileStorage
    celery: Celery

    @classmethod
    def build(cls, settings: BatchSettings) -> BatchAPI:
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=30)
        return cls(
            settings,
            BatchStore(client, settings.stream_prefix),
            open_storage(settings),
            queue.make_celery(settings),
        )


@blueprint.record_once
def _build(state: BlueprintSetupState) -> None:
    settings = settings_from_env()
    state.app.extensions[EXTENSION] = BatchAPI.build(settings)
    # The app's body limit yields to the file limit on this route only.
    setattr(upload_file, "max_body_bytes", settings.batch_max_file_bytes + MULTIPART_SLACK)  # noqa: B010


@blueprint.before_request
def _enabled() -> None:
    if not api().settings.batch_enabled:
        raise NotFound("the Batch API is not enabled on this deployment (batch.enabled in the chart)")


def api() -> BatchAPI:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def owner() -> str | None:
    """Who a new file or batch belongs to, and whose a request may see:
    None, the whole deployment, until API keys carry principals."""
    return None


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), mimetype="application/json")


def _limit(default: int, most: int) -> int:
    raw = request.args.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidRequest(f"limit must be an integer from 1 to {most}", param="limit")
    return int(raw)


# -------------------------------------------------------------------- files


@blueprint.post("/files")
def upload_file() -> Response:
    parts = api()
    request.max_content_length = parts.settings.batch_max_file_bytes + MULTIPART_SLACK
    upload = request.files.get("file")
    purpose = request.form.get("purpose")
    if upload is None:
        raise InvalidRequest("a multipart field 'file' holding the JSONL file is required", param="file")
    if purpose != "batch":
        raise InvalidRequest(
            f"purpose {purpose!r} is not supported; files here are batch inputs: purpose='batch'",
            param="purpose",
        )
    file_id = f"file-{uuid.uuid4().hex}"
    with parts.storage.writer(storage_key(file_id)) as target:
        size, lines = copy_validated(
            upload.stream, target, parts.settings.batch_max_file_bytes, parts.settings.batch_max_lines
        )
    file = FileObject(
        id=file_id,
        bytes=size,
        created_at=int(time.time()),
        filename=upload.filename or "batch.jsonl",
        purpose="batch",
    )
    parts.store.add_file(FileRecord(file=file, owner=owner(), lines=lines))
    return _json(file)


@blueprint.get("/files")
def list_files() -> Response:
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    files, more = api().store.list_files(
        owner(),
        request.args.get("purpose"),
        request.args.get("after"),
        _limit(10_000, 10_000),
        order == "desc",
    )
    return _json(
        FileList(
            data=files,
            first_id=files[0].id if files else None,
            last_id=files[-1].id if files else None,
            has_more=more,
        )
    )


@blueprint.get("/files/<file_id>")
def get_file(file_id: str) -> Response:
    return _json(api().store.get_file(file_id, owner()).file)


@blueprint.get("/files/<file_id>/content")
def file_content(file_id: str) -> Response:
    parts = api()
    record = parts.store.get_file(file_id, owner())
    key = record.key

    def body() -> Iterator[bytes]:
        with parts.storage.reader(key) as stream:
            while block := stream.read(64 * 1024):
                yield block

    return Response(body(), mimetype="application/jsonl", headers={"Content-Length": str(record.file.bytes)})


@blueprint.delete("/files/<file_id>")
def delete_file(file_id: str) -> Response:
    parts = api()
    record = parts.store.get_file(file_id, owner())
    for batch_id in parts.store.active_batches():
        if parts.store.get_batch(batch_id).batch.input_file_id == file_id:
            raise InvalidRequest(
                f"file {file_id} is the input of batch {batch_id}, which has not finished; "
                "cancel the batch or wait for it first",
                param="file_id",
            )
    parts.store.delete_file(file_id)
    parts.storage.delete(record.key)
    return _json(FileDeleted(id=file_id))


# ------------------------------------------------------------------ batches


def _window_s(window: str, most: int) -> int:
    """OpenAI's "24h", or any ``<n>s|m|h|d`` up to the configured longest."""
    match = WINDOW.match(window)
    if match is None:
        raise InvalidRequest(
            f"completion_window {window!r} is not a duration such as '24h'", param="completion_window"
        )
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if not 1 <= seconds <= most:
        raise InvalidRequest(f"completion_window must be between 1s and {most}s", param="completion_window")
    return seconds


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16:
        raise InvalidRequest("metadata holds at most 16 pairs", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidRequest(
                "metadata keys are at most 64 characters and values at most 512", param="metadata"
            )


@blueprint.post("/batches")
def create_batch() -> Response:
    parts = api()
    body = parse_body(CreateBatch)
    if body.endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint {body.endpoint!r} is not supported; use one of {', '.join(ENDPOINTS)}",
            param="endpoint",
        )
    window = _window_s(body.completion_window, parts.settings.batch_max_window_s)
    _check_metadata(body.metadata)
    input_file = parts.store.get_file(body.input_file_id, owner())
    if input_file.file.purpose != "batch":
        raise InvalidRequest(
            f"file {body.input_file_id} has purpose {input_file.file.purpose!r}, not 'batch'",
            param="input_file_id",
        )
    now = int(time.time())
    batch = BatchObject(
        id=f"batch_{uuid.uuid4().hex}",
        endpoint=body.endpoint,
        input_file_id=body.input_file_id,
        completion_window=body.completion_window,
        status=BatchStatus.VALIDATING,
        created_at=now,
        expires_at=now + window,
        metadata=body.metadata,
    )
    batch.request_counts.total = input_file.lines
    parts.store.add_batch(BatchRecord(batch=batch, owner=owner()))
    queue.send(parts.celery, queue.START, batch.id)
    return _json(batch)


@blueprint.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    store = api().store
    return _json(store.with_counts(store.get_batch(batch_id, owner()).batch))


@blueprint.get("/batches")
def list_batches() -> Response:
    batches, more = api().store.list_batches(owner(), request.args.get("after"), _limit(20, 100))
    return _json(
        BatchList(
            data=batches,
            first_id=batches[0].id if batches else None,
            last_id=batches[-1].id if batches else None,
            has_more=more,
        )
    )


@blueprint.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    store = api().store
    store.get_batch(batch_id, owner())

    def cancel(record: BatchRecord) -> bool:
        status = record.batch.status
        if status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            return False
        if status.terminal or status == BatchStatus.FINALIZING:
            raise InvalidRequest(
                f"batch {batch_id} is {status.value} and can no longer be cancelled",
                param="batch_id",
                code="batch_not_cancellable",
                status=409,
            )
        record.batch.status = BatchStatus.CANCELLING
        record.batch.cancelling_at = int(time.time())
        return True

    record = store.update_batch(batch_id, cancel)
    return _json(store.with_counts(record.batch))
