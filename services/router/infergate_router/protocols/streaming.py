"""Opening the token streams of one request and answering with SSE, the
same for every protocol that streams.

A client that lost its connection comes back in one of two ways, as long
as the stream has not expired (the workers keep it five minutes after its
end), and never starts a second generation:

* it sends the same request again with ``X-Request-Id`` set to the id the
  first answer carried (its ``X-Request-Id`` header) and ``Last-Event-ID``
  set to the last SSE ``id:`` it received;
* or (OpenAI streams, EventSource-style) ``GET /openai/v1/streams/<request
  id>`` with ``Last-Event-ID`` (or ``?last_event_id=``); without one the
  whole stream is replayed.
"""

from __future__ import annotations

from flask import Response

from infergate_common.errors import InvalidRequest, NotFound
from infergate_common.registry_api import ModelRecord
from infergate_common.streams import stream_key
from infergate_common.worker_api import GenerateRequest

from ..auth import guard
from ..client_watch import client_watch
from ..metered_stream import MeteredFormatter
from ..relay import StreamFormatter, relay
from ..request_scope import current
from ..sse import sse_response
from ..usage import TokenCount
from .edge import client_request_id, last_event_id, request_id


def stream_response(
    model: ModelRecord,
    requests: list[GenerateRequest],
    formatter: StreamFormatter,
    note: str | None = None,
) -> Response:
    scope = current()
    svc = scope.services
    resume_from = last_event_id()
    if resume_from is not None and len(requests) != 1:
        raise InvalidRequest("only a request with a single prompt can be resumed")
    group = svc.dispatcher.stream_group()
    watch = client_watch(scope.environ)
    try:
        if resume_from is not None:
            key = stream_key(svc.settings.stream_prefix, requests[0].request_id)
            if not svc.reader.exists(key):
                raise NotFound(f"no stream for request {scope.request_id}; it ended long ago or never began")
            svc.dispatcher.resume_stream(group, requests[0].request_id, resume_from)
        else:
            if client_request_id():
                key = stream_key(svc.settings.stream_prefix, requests[0].request_id)
                if svc.reader.exists(key):
                    raise InvalidRequest(
                        "X-Request-Id names a stream that already exists: send Last-Event-ID to resume it, "
                        "or use a new id",
                        status=409,
                    )
            for req in requests:
                svc.dispatcher.open_stream(group, model, req, note if len(requests) == 1 else None, watch)
    except BaseException:
        group.close()
        raise
    # A resumed stream's tokens were charged to the request that started it.
    tokens = guard.stream_tokens() if resume_from is None else TokenCount()
    metered = MeteredFormatter(formatter, tokens, scope.request_id)
    events = relay(group, metered, svc.metrics, model.name, scope.started_at, request_id())
    settle = guard.stream_settler()
    # A client that leaves frees its replicas and cancels its generations at
    # once, not when a write to it first fails (tokens may be far apart).
    stop_watch = watch(group.abandon) if watch is not None else None

    def close() -> None:
        try:
            if stop_watch is not None:
                stop_watch()
            group.close()
        finally:
            settle()

    return sse_response(events, on_close=close, pending=group.queue.qsize)


def replay_response(request_id: str, model: str, formatter: StreamFormatter, last_id: str) -> Response:
    """The stream of an earlier request, from the entry after ``last_id``."""
    scope = current()
    svc = scope.services
    key = stream_key(svc.settings.stream_prefix, request_id)
    if not svc.reader.exists(key):
        raise NotFound(f"no stream for request {scope.request_id}; it ended long ago or never began")
    group = svc.dispatcher.stream_group()
    try:
        svc.dispatcher.resume_stream(group, request_id, last_id)
    except BaseException:
        group.close()
        raise
    # A replay is not charged again: the original request was.
    metered = MeteredFormatter(formatter, guard.stream_tokens(), scope.request_id)
    events = relay(group, metered, svc.metrics, model, scope.started_at, request_id)
    return sse_response(events, on_close=group.close, pending=group.queue.qsize)
