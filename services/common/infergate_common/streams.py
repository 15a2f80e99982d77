"""Token streams through Redis: the entry types and their encoding.

One Redis stream per request, key ``<prefix>:stream:<request_id>``, read
with plain ``XREAD`` by exactly one router. Each entry has two fields:
``event`` (``delta``, ``heartbeat``, ``done``, ``error``) and ``data`` (JSON).
Every stream ends with exactly one ``done`` or ``error``. The writer caps the
stream with ``MAXLEN ~`` and sets an expiry on the key after the final
entry, so abandoned streams disappear by themselves.

* ``delta``: ``{"index", "text", "tokens", "logprobs"?, "tool_calls"?,
  "finish_reason"?}``; ``tool_calls`` are :class:`ToolCallDelta` pieces;
  the last delta of a choice carries its ``finish_reason`` (its text may be
  empty), so each choice's end is known before the whole request's.
* ``heartbeat``: ``{}``, written at least every ``heartbeat_interval`` while
  the request is queued or generating.
* ``done``: ``{"finish_reasons": {"0": "stop", ...}, "usage": {...}}``.
* ``error``: ``{"status", "type", "message"}``.
"""

from __future__ import annotations

import json
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
    """Parse the field map ``XREAD`` returns (bytes or str keys)."""
    norm = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    name = norm.get("event", "")
    cls = _BY_NAME.get(name)
    if cls is None:
        return ErrorEvent(message=f"unknown stream event {name!r}")
    data = json.loads(norm.get("data") or "{}")
    return cls.model_validate(data)  # type: ignore[return-value]


def is_final(event: StreamEvent) -> bool:
    return isinstance(event, (DoneEvent, ErrorEvent))


class StreamWriter:
    """Worker side of one request's stream.

    ``redis`` is a ``redis.Redis`` client (thread-safe, pooled). Writes after
    the final entry are ignored, so a cancelled request cannot append.
    """

    def __init__(
        self,
        redis: Any,
        request_id: str,
        prefix: str = DEFAULT_PREFIX,
        maxlen: int = DEFAULT_MAXLEN,
        ttl_s: int = DEFAULT_TTL_S,
    ) -> None:
        self.redis = redis
        self.key = stream_key(prefix, request_id)
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self.closed = False

    def _add(self, event: StreamEvent) -> None:
        if self.closed:
            return
        self.redis.xadd(self.key, encode_event(event), maxlen=self.maxlen, approximate=True)

    def delta(
        self,
        index: int,
        text: str,
        tokens: int,
        logprobs: list[TokenLogprob] | None = None,
        finish_reason: FinishReason | None = None,
        tool_calls: list[ToolCallDelta] | None = None,
    ) -> None:
        self._add(
            DeltaEvent(
                index=index,
                text=text,
                tokens=tokens,
                logprobs=logprobs,
                finish_reason=finish_reason,
                tool_calls=tool_calls or None,
            )
        )

    def heartbeat(self) -> None:
        self._add(HeartbeatEvent())

    def _finish(self, event: StreamEvent) -> None:
        if self.closed:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.key, encode_event(event), maxlen=self.maxlen, approximate=True)
        pipe.expire(self.key, self.ttl_s)
        pipe.execute()
        self.closed = True

    def done(self, finish_reasons: dict[int, FinishReason], usage: Usage) -> None:
        self._finish(
            DoneEvent(
                finish_reasons={str(k): v for k, v in finish_reasons.items()},
                usage=usage,
            )
        )

    def error(self, message: str, status: int = 500, type: str = "internal_error") -> None:
        self._finish(ErrorEvent(status=status, type=type, message=message))
