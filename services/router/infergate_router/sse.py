"""The one place that frames server-sent events.

A protocol module produces :class:`SseEvent` items; :func:`sse_response`
turns them into ``text/event-stream`` bytes. The status and headers are
decided before the generator is first advanced, so they always precede the
first byte; errors after that travel as events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response

DONE = "[DONE]"


@dataclass(frozen=True)
class SseEvent:
    """``data`` is a JSON-able object, JSON already rendered (``bytes``: the
    per-token chunks, from templates), the literal ``[DONE]``, or ``None``
    for a comment line (a keep-alive that also reveals a gone client)."""

    data: Any
    id: str | None = None


KEEPALIVE = SseEvent(None)

# Most events one socket write carries.
MAX_COALESCED = 64


def frame(event: SseEvent) -> bytes:
    if event.data is None:
        # A lone comment line, no blank line: after an event that carried an
        # id, a blank line makes some clients (the openai SDK) dispatch an
        # empty event and fail to parse it.
        return b": keep-alive\n"
    data = event.data
    if isinstance(data, bytes):
        payload = data
    elif isinstance(data, str):
        payload = data.encode()
    else:
        payload = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    if event.id:
        return b"id: " + event.id.encode() + b"\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"


class _Body:
    """The response body: framed events, and a ``close()`` the WSGI server
    calls even when it never started iterating (a generator's ``finally``
    would not run then), so ``on_close`` always runs."""

    def __init__(
        self,
        events: Iterator[SseEvent],
        on_close: Callable[[], None] | None,
        pending: Callable[[], int] | None = None,
    ) -> None:
        self.events = events
        self.on_close = on_close
        self.pending = pending

    def __iter__(self) -> Iterator[bytes]:
        # Events already waiting behind this one go out in the same write:
        # a client that fell behind (or a worker that wrote several tokens
        # at once) costs one socket send, not one per event.
        buffer: list[bytes] = []
        for event in self.events:
            buffer.append(frame(event))
            if self.pending is not None and len(buffer) < MAX_COALESCED and self.pending() > 0:
                continue
            yield b"".join(buffer)
            buffer.clear()
        if buffer:
            yield b"".join(buffer)

    def close(self) -> None:
        try:
            close = getattr(self.events, "close", None)
            if close is not None:
                close()
        finally:
            if self.on_close is not None:
                self.on_close()


def sse_response(
    events: Iterator[SseEvent],
    headers: dict[str, str] | None = None,
    on_close: Callable[[], None] | None = None,
    pending: Callable[[], int] | None = None,
) -> Response:
    """``pending()`` counts the events ready behind the current one."""
    response = Response(_Body(events, on_close, pending), status=200, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
