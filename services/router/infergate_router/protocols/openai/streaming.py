"""OpenAI stream chunks from worker stream events.

Semantics clients rely on: the role in the first chat delta of each choice,
``finish_reason`` null until the last chunk of that choice,
``stream_options.include_usage`` adds a final chunk with empty ``choices``
and the usage, and ``data: [DONE]`` ends a stream that succeeded. A failure
mid-stream is one ``data: {"error": {...}}`` event, then the end.

The ``id:`` of each event is the Redis entry id it came from, so a client
can reconnect with ``Last-Event-ID`` (see the routes module).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from infergate_common.streams import DeltaEvent, DoneEvent, ErrorEvent

from ...sse import DONE, SseEvent
from ...stream_reader import Entry
from .models import ErrorBody, ErrorDetail, Usage
from .translate import chat_logprobs, completion_logprobs, finish_reason, tool_call_chunks, tool_call_deltas

_NULL = b"null"
# finish_reason as JSON, rendered once.
_REASONS: dict[str | None, bytes] = {None: _NULL, "stop": b'"stop"', "length": b'"length"'}


def _reason(reason: str | None) -> bytes:
    rendered = _REASONS.get(reason)
    return rendered if rendered is not None else orjson.dumps(reason)


class _OpenAIStream:
    """Chunks are rendered from a template made once per stream: the
    constant head (id, object, created, model) and tail (``usage``) around
    the choices, which are the only part rendered per token."""

    object_name = ""

    def __init__(
        self, chunk_id: str, created: int, model: str, n: int, include_usage: bool, single: bool
    ) -> None:
        self.chunk_id = chunk_id
        self.created = created
        self.model = model
        self.n = n
        self.include_usage = include_usage
        # Entry ids are only meaningful to resume a request with one stream.
        self.single = single
        self.finished: set[int] = set()
        self.usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        head = orjson.dumps({"id": chunk_id, "object": self.object_name, "created": created, "model": model})
        self._head = head[:-1] + b',"choices":['
        self._tail = b'],"usage":null}' if include_usage else b"]}"

    def _chunk(self, choices: list[bytes]) -> bytes:
        return self._head + b",".join(choices) + self._tail

    def _event(self, data: bytes, entry: Entry) -> SseEvent:
        return SseEvent(data, entry.id if self.single else None)

    def _choice(self, index: int, event: DeltaEvent | None, reason: str | None) -> bytes:
        raise NotImplementedError

    def delta(self, position: int, entry: Entry, event: DeltaEvent) -> Iterable[SseEvent]:
        index = position * self.n + event.index
        if index in self.finished:
            return ()
        reason = finish_reason(event.finish_reason)
        if reason is not None:
            self.finished.add(index)
        elif not event.text and not event.logprobs and not event.tool_calls:
            return ()
        return (self._event(self._chunk([self._choice(index, event, reason)]), entry),)

    def done(self, position: int, entry: Entry, event: DoneEvent) -> Iterable[SseEvent]:
        self.usage.prompt_tokens += event.usage.prompt_tokens
        self.usage.completion_tokens += event.usage.completion_tokens
        self.usage.total_tokens += event.usage.total_tokens
        # Choices whose last delta carried no finish reason end here.
        ended = []
        for key, reason in sorted(event.finish_reasons.items(), key=lambda item: int(item[0])):
            index = position * self.n + int(key)
            if index not in self.finished:
                self.finished.add(index)
                ended.append(self._choice(index, None, finish_reason(reason)))
        if ended:
            yield self._event(self._chunk(ended), entry)

    def error(self, entry: Entry, event: ErrorEvent) -> Iterable[SseEvent]:
        body = ErrorBody(error=ErrorDetail(message=event.message, type=event.type, code=str(event.status)))
        yield SseEvent(body.model_dump())

    def finish(self) -> Iterable[SseEvent]:
        if self.include_usage:
            chunk: dict[str, Any] = {
                "id": self.chunk_id,
                "object": self.object_name,
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage.model_dump(),
            }
            yield SseEvent(chunk)
        yield SseEvent(DONE)


class CompletionStream(_OpenAIStream):
    object_name = "text_completion"

    def _choice(self, index: int, event: DeltaEvent | None, reason: str | None) -> bytes:
        text = orjson.dumps(event.text) if event is not None else b'""'
        # The worker's text offsets already count from the start of the choice's text.
        logprobs = completion_logprobs(event.logprobs) if event is not None else None
        rendered = _NULL if logprobs is None else logprobs.__pydantic_serializer__.to_json(logprobs)
        return b'{"index":%d,"text":%b,"logprobs":%b,"finish_reason":%b}' % (
            index,
            text,
            rendered,
            _reason(reason),
        )


class ChatStream(_OpenAIStream):
    object_name = "chat.completion.chunk"

    def __init__(self, *args: Any, resumed: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resumed = resumed
        self.started: set[int] = set()

    def delta(self, position: int, entry: Entry, event: DeltaEvent) -> Iterable[SseEvent]:
        """A delta with tool calls may become several chunks (see ``tool_call_chunks``):
        text and log probabilities in the first, the finish reason in the last."""
        groups = tool_call_chunks(event.tool_calls) if event.tool_calls else []
        if len(groups) <= 1:
            return super().delta(position, entry, event)
        parts: list[SseEvent] = []
        for number, group in enumerate(groups):
            first, last = number == 0, number == len(groups) - 1
            part = DeltaEvent(
                index=event.index,
                text=event.text if first else "",
                tokens=event.tokens if first else 0,
                logprobs=event.logprobs if first else None,
                tool_calls=group,
                finish_reason=event.finish_reason if last else None,
            )
            parts.extend(super().delta(position, entry, part))
        return parts

    def _choice(self, index: int, event: DeltaEvent | None, reason: str | None) -> bytes:
        text = event.text if event is not None else ""
        opening = index not in self.started and not self.resumed
        self.started.add(index)
        if event is not None and event.tool_calls:
            fields: dict[str, Any] = {"role": "assistant", "content": text} if opening else {}
            if text:
                fields["content"] = text
            fields["tool_calls"] = tool_call_deltas(event.tool_calls)
            delta = orjson.dumps(fields)
        elif opening:
            delta = b'{"role":"assistant","content":%b}' % orjson.dumps(text)
        else:
            delta = b'{"content":%b}' % orjson.dumps(text) if text else b"{}"
        logprobs = chat_logprobs(event.logprobs) if event is not None else None
        rendered = _NULL if logprobs is None else logprobs.__pydantic_serializer__.to_json(logprobs)
        return b'{"index":%d,"delta":%b,"logprobs":%b,"finish_reason":%b}' % (
            index,
            delta,
            rendered,
            _reason(reason),
        )
