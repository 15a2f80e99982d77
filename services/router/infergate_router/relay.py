"""From a :class:`~infergate_router.dispatch.StreamGroup` to SSE events.

The protocol modules describe how their chunks look (a
:class:`StreamFormatter`); this relay owns what every stream shares: the
order of events, keep-alives on heartbeats, token metrics, and closing the
group (which cancels the worker when the client went away).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Protocol

from infergate_common.logs import request_context
from infergate_common.streams import DeltaEvent, DoneEvent, ErrorEvent, HeartbeatEvent

from .dispatch import StreamGroup
from .metrics import RouterMetrics
from .sse import KEEPALIVE, SseEvent
from .stream_reader import Entry

# Relayed tokens reach the token counter at most this often per stream
# (and at its end): a counter update per token was a few percent of the relay.
TOKEN_COUNT_FLUSH_S = 0.25


class StreamFormatter(Protocol):
    def delta(self, position: int, entry: Entry, event: DeltaEvent) -> Iterable[SseEvent]: ...

    def done(self, position: int, entry: Entry, event: DoneEvent) -> Iterable[SseEvent]: ...

    def error(self, entry: Entry, event: ErrorEvent) -> Iterable[SseEvent]: ...

    def finish(self) -> Iterable[SseEvent]: ...


def relay(
    group: StreamGroup,
    formatter: StreamFormatter,
    metrics: RouterMetrics,
    model: str,
    started_at: float,
    request_id: str,
) -> Iterator[SseEvent]:
    outcome = "disconnect"
    first_at: float | None = None
    last_at = 0.0
    tokens = 0
    uncounted = 0
    counted_at = time.monotonic()
    prompt_tokens = 0
    metrics.stream_started(model)
    try:
        with request_context(request_id):
            for position, entry in group.entries():
                event = entry.event
                if isinstance(event, HeartbeatEvent):
                    yield KEEPALIVE
                elif isinstance(event, DeltaEvent):
                    if event.tokens:
                        last_at = time.monotonic()
                        if first_at is None:
                            first_at = last_at
                            metrics.first_token(model, first_at - started_at)
                        tokens += event.tokens
                        uncounted += event.tokens
                        if last_at - counted_at >= TOKEN_COUNT_FLUSH_S:
                            metrics.output_tokens(model, uncounted)
                            uncounted, counted_at = 0, last_at
                    yield from formatter.delta(position, entry, event)
                elif isinstance(event, DoneEvent):
                    prompt_tokens += event.usage.prompt_tokens
                    yield from formatter.done(position, entry, event)
                else:
                    outcome = "timeout" if event.status == 504 else "error"
                    yield from formatter.error(entry, event)
                    return
            outcome = "done"
            yield from formatter.finish()
    finally:
        group.close()
        metrics.output_tokens(model, uncounted)
        metrics.stream_ended(model, outcome)
        metrics.prompt_tokens(model, prompt_tokens)
        if first_at is not None and tokens > 1:
            metrics.per_output_token(model, (last_at - first_at) / (tokens - 1))
