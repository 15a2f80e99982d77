"""Token streams through Redis: the entry types and their encoding.

This docstring is the protocol's specification; writers live in
:mod:`infergate_common.stream_writer`, the reader in the router.

One Redis stream per request, key ``<prefix>:stream:<request_id>``, read
with plain ``XREAD`` by exactly one router. Each entry has two fields:
``event`` (``delta``, ``heartbeat``, ``done``, ``error``) and ``data`` (JSON).
Every stream ends with exactly one ``done`` or ``error``.

* ``delta``: ``{"seq", "index", "text", "tokens", "logprobs"?,
  "tool_calls"?, "finish_reason"?}``; ``tool_calls`` are
  :class:`ToolCallDelta` pieces; the last delta of a choice carries its
  ``finish_reason`` (its text may be empty), so each choice's end is known
  before the whole request's.
* ``heartbeat``: ``{}``, written at least every ``heartbeat_interval`` while
  the request is queued or generating.
* ``done``: ``{"deltas", "finish_reasons": {"0": "stop", ...}, "usage": {...}}``.
* ``error``: ``{"status", "type", "message"}``.

Integrity. ``seq`` numbers the deltas of one stream 0, 1, 2, ... (across
its choices), in the order the writer wrote them, and ``done.deltas`` is how
many there were. A reader relays delta ``seq`` only after ``seq - 1``; it
drops a delta whose ``seq`` it has already relayed (a write retried after a
lost reply lands twice, identical), and ends the stream with an error event
when a delta skips ahead or the ``done`` counts more deltas than arrived: a
client never receives text with a hole followed by a normal end.

Writing. Entries are written in batches, one call of an append script each,
which Redis runs atomically, so a batch lands whole or not at all; a failed
batch is retried a bounded number of times, after which the writer stops
the generations it carries and owes each of them an ``error`` entry,
written as soon as Redis takes writes again (the stream's earlier entries
are trimmed first, which frees the memory of a full Redis). The writer caps
each stream with ``MAXLEN ~``, and sets the key's expiry (``ttl_s``) with
its first entry, again every ``ttl_s / 2`` while it grows, and with its
final entry: a stream whose worker died mid-way disappears by itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field

from .worker_api import FinishReason, TokenLogprob, ToolCallDelta, Usage

DEFAULT_PREFIX = "infergate"
DEFAULT_MAXLEN = 10_000
DEFAULT_TTL_S = 300
HEARTBEAT_INTERVAL_S = 1.0


def stream_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:stream:{request_id}"


class DeltaEvent(BaseModel):
    event: Literal["delta"] = "delta"
    # Position of this delta in its stream: 0, 1, 2, ...
    seq: int = Field(ge=0)
    index: int = 0
    text: str = ""
    tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: FinishReason | None = None


class HeartbeatEvent(BaseModel):
    event: Literal["heartbeat"] = "heartbeat"


class DoneEvent(BaseModel):
    event: Literal["done"] = "done"
    # How many deltas the stream carried before this entry.
    deltas: int = Field(ge=0)
    finish_reasons: dict[str, FinishReason] = Field(default_factory=dict)
    usage: Usage


class ErrorEvent(BaseModel):
    event: Literal["error"] = "error"
    status: int = 500
    type: str = "internal_error"
    message: str


StreamEvent = DeltaEvent | HeartbeatEvent | DoneEvent | ErrorEvent

_BY_NAME: dict[str, type[BaseModel]] = {
    "delta": DeltaEvent,
    "heartbeat": HeartbeatEvent,
    "done": DoneEvent,
    "error": ErrorEvent,
}


def encode_event(event: StreamEvent) -> dict[str, str]:
    """The field map passed to ``XADD``."""
    return {
        "event": event.event,
        "data": event.model_dump_json(exclude={"event"}, exclude_none=True),
    }


def decode_event(fields: dict[Any, Any]) -> StreamEvent:
    """Parse the field map ``XREAD``/``XRANGE`` return (bytes or str keys)."""
    name = fields.get(b"event")
    if name is None:
        name = fields.get("event", "")
    data = fields.get(b"data")
    if data is None:
        data = fields.get("data")
    return _decode(name, data)


def decode_fields(fields: list[Any]) -> StreamEvent:
    """Parse an entry's raw field list (``[b"event", name, b"data", json]``,
    as a raw ``XREAD`` reply holds it, without redis-py's map building): the
    router decodes one entry per token."""
    if len(fields) == 4 and fields[0] == b"event" and fields[2] == b"data":
        return _decode(fields[1], fields[3])
    return decode_event(dict(zip(fields[::2], fields[1::2], strict=False)))


def _decode(name: bytes | str, data: bytes | str | None) -> StreamEvent:
    if isinstance(name, bytes):
        name = name.decode()
    cls = _BY_NAME.get(name)
    if cls is None:
        return ErrorEvent(message=f"unknown stream event {name!r}")
    # Validated straight from the JSON bytes (pydantic's Rust path).
    return cls.model_validate_json(data or b"{}")  # type: ignore[return-value]


def is_final(event: StreamEvent) -> bool:
    return isinstance(event, (DoneEvent, ErrorEvent))


def deltas_in_order(events: Iterable[StreamEvent]) -> list[DeltaEvent]:
    """The deltas of one stream as a reader relays them, by the integrity
    rules above: seq 0, 1, 2, ... once each. A delta whose seq came before
    is a retried write that landed twice and is dropped, if it equals the
    one it repeats. Raises :class:`ValueError` on a hole, or on a repeat
    that differs."""
    relayed: list[DeltaEvent] = []
    for event in events:
        if not isinstance(event, DeltaEvent):
            continue
        if event.seq < len(relayed):
            if event != relayed[event.seq]:
                raise ValueError(f"delta {event.seq} written twice, differently")
            continue
        if event.seq != len(relayed):
            raise ValueError(f"delta {len(relayed)} missing: the next is {event.seq}")
        relayed.append(event)
    return relayed
