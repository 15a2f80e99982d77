"""A stream formatter that also counts tokens and keeps worker failures'
text out of the client's events.

Wraps the protocol's formatter (see :mod:`infergate_router.relay`): the
tokens of every delta and the prompt tokens of every ``done`` go to the
request's counter, so a token limit settles from what was really generated,
even when the client leaves early; an ``error`` event of status 500 (the
worker's own failure) reaches the client as a plain sentence with the
request id, and its text goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from infergate_common.streams import DeltaEvent, DoneEvent, ErrorEvent

from .public_errors import scrub, with_request_id, worker_failure
from .relay import StreamFormatter
from .sse import SseEvent
from .stream_reader import Entry
from .usage import TokenCount

log = logging.getLogger(__name__)


class MeteredFormatter:
    def __init__(self, inner: StreamFormatter, tokens: TokenCount, request_id: str) -> None:
        self.inner = inner
        self.tokens = tokens
        self.request_id = request_id

    def delta(self, position: int, entry: Entry, event: DeltaEvent) -> Iterable[SseEvent]:
        self.tokens.add(0, event.tokens)
        return self.inner.delta(position, entry, event)

    def done(self, position: int, entry: Entry, event: DoneEvent) -> Iterable[SseEvent]:
        self.tokens.add(event.usage.prompt_tokens, 0)
        return self.inner.done(position, entry, event)

    def error(self, entry: Entry, event: ErrorEvent) -> Iterable[SseEvent]:
        if event.status >= 500:
            log.warning("stream ended with an error: %s", event.message, extra={"status": event.status})
            message = worker_failure(event.status) if event.status == 500 else scrub(event.message)
            event = event.model_copy(update={"message": with_request_id(message, self.request_id)})
        return self.inner.error(entry, event)

    def finish(self) -> Iterable[SseEvent]:
        return self.inner.finish()

    def __getattr__(self, name: str) -> object:
        # Whatever else the protocol's formatter offers, unchanged.
        return getattr(self.inner, name)
