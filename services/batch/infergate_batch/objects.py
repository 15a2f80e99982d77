"""OpenAI's file and batch objects, the batch input and output lines, and
the records kept in Redis behind them.

The public objects are exactly the shapes of OpenAI's API (the ``openai``
SDK parses them); the records add what infergate needs to run a batch
(the owner, the chunks, where the bytes live).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


# ------------------------------------------------------------------ files


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileRecord(BaseModel):
    """A file as stored: the public object, its owner and its lines."""

    file: FileObject
    # The API key (or principal) the file belongs to; None: the whole deployment.
    owner: str | None = None
    lines: int = 0

    @property
    def key(self) -> str:
        return storage_key(self.file.id)


def storage_key(file_id: str) -> str:
    return f"files/{file_id}.jsonl"


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# ---------------------------------------------------------------- batches


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(BaseModel):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None


class Chunk(BaseModel):
    """Lines ``[first_line, first_line + count)`` of the input file, at bytes
    ``[start, end)``. Line numbers start at 1, as an editor shows them."""

    index: int
    first_line: int
    count: int
    start: int
    end: int


class BatchRecord(BaseModel):
    batch: BatchObject
    owner: str | None = None
    # Set once the input is read: how the lines are cut into Celery tasks.
    chunks: int = 0
    chunk_lines: int = 0
    # Every chunk has been sent to the queue (a restarted start sends the rest).
    enqueued: bool = False
    # The window ended before the lines did: finalize as expired.
    expire: bool = False


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class CreateBatch(BaseModel):
    """``POST /batches``; unknown fields are accepted, as OpenAI's own."""

    model_config = ConfigDict(extra="allow")

    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


# ------------------------------------------------------------------ lines


class InputLine(BaseModel):
    """One line of a batch input file."""

    model_config = ConfigDict(extra="allow")

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


class LineResponse(BaseModel):
    status_code: int
    request_id: str
    body: dict[str, Any]


class LineError(BaseModel):
    code: str
    message: str


class OutputLine(BaseModel):
    """One line of an output or error file, in OpenAI's format: a request
    that ran has a ``response`` (its status and body, an error body when it
    failed); one that never ran (expired) has an ``error``."""

    id: str
    custom_id: str
    response: LineResponse | None = None
    error: LineError | None = None
