"""The one place that frames server-sent events.

A protocol module produces :class:`SseEvent` items; :func:`sse_response`
turns them into ``text/event-stream`` bytes. The status and headers are
decided before the generator is first advanced, so they always precede the
first byte; errors after that travel as events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Response

DONE = "[DONE]"


@dataclass(frozen=True)
class SseEvent:
    """``data`` is a JSON-able object, the literal ``[DONE]``, or ``None``
    for a comment line (a keep-alive that also reveals a gone client)."""

    data: Any
    id: str | None = None


KEEPALIVE = SseEvent(None)


def frame(event: SseEvent) -> bytes:
    if event.data is None:
        return b": keep-alive\n\n"
    payload = event.data if isinstance(event.data, str) else json.dumps(event.data, separators=(",", ":"))
    head = f"id: {event.id}\n" if event.id else ""
    return f"{head}data: {payload}\n\n".encode()


def sse_response(events: Iterator[SseEvent], headers: dict[str, str] | None = None) -> Response:
    def body() -> Iterator[bytes]:
        try:
            for event in events:
                yield frame(event)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    response = Response(body(), status=200, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
