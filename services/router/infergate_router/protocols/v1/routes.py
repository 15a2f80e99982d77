"""The KServe v1 blueprint: model list, readiness, ``:predict`` for every
task (generative models too, streamed when asked)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Response

from infergate_common.errors import InfergateError, ServiceUnavailable
from infergate_common.streams import DeltaEvent, DoneEvent, ErrorEvent
from infergate_common.worker_api import Task, Usage

from ... import limits
from ...sse import DONE, SseEvent
from ...stream_reader import Entry
from .. import kserve, tabular
from ..edge import parse_body, reachable_models, ready, request_id, resolve_model
from ..streaming import stream_response
from .models import ModelNames, ModelReady, PredictRequest, PredictResponse, StreamChunk

blueprint = Blueprint("v1", __name__, url_prefix="/v1")


def render_error(error: InfergateError) -> Response:
    return kserve.render_error(error)


def _json(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(exclude_none=True), status=status, mimetype="application/json")


@blueprint.get("/models")
def list_models() -> Response:
    return _json(ModelNames(models=[m.name for m in reachable_models()]))


@blueprint.get("/models/<name>")
def model_ready(name: str) -> Response:
    model = resolve_model(name)
    if not ready(model):
        raise ServiceUnavailable(f"Model with name {name} is not ready.")
    return _json(ModelReady(name=model.name, ready=True))


class V1Stream:
    """v1 stream events (see :mod:`.models`)."""

    def __init__(self, n: int, single: bool) -> None:
        self.n = n
        self.single = single
        self.usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)

    def _event(self, data: Any, entry: Entry) -> SseEvent:
        return SseEvent(data, entry.id if self.single else None)

    def delta(self, position: int, entry: Entry, event: DeltaEvent) -> Iterable[SseEvent]:
        if event.text or event.finish_reason:
            chunk = StreamChunk(
                index=position, choice=event.index, text=event.text, finish_reason=event.finish_reason
            )
            yield self._event(chunk.model_dump(), entry)

    def done(self, position: int, entry: Entry, event: DoneEvent) -> Iterable[SseEvent]:
        self.usage.prompt_tokens += event.usage.prompt_tokens
        self.usage.completion_tokens += event.usage.completion_tokens
        self.usage.total_tokens += event.usage.total_tokens
        return ()

    def error(self, entry: Entry, event: ErrorEvent) -> Iterable[SseEvent]:
        yield SseEvent({"error": event.message})

    def finish(self) -> Iterable[SseEvent]:
        yield SseEvent({"usage": self.usage.model_dump()})
        yield SseEvent(DONE)


@blueprint.post("/models/<name>:predict")
def predict(name: str) -> Response:
    body = parse_body(PredictRequest)
    model = resolve_model(name)
    items, where = body.items()
    limits.check_v1_instances(len(items), where)
    params = kserve.parameters(body.parameters)
    rid = request_id()
    if model.task == Task.TABULAR:
        shape, data = tabular.v1_rows(items, where)
        result = tabular.predict(model, rid, shape, data, params.predict_proba, params.raw_margin)
        return _json(PredictResponse(predictions=result.predictions))
    if not model.task.generative:
        response = kserve.encode(model, rid, kserve.texts(items, where), params)
        return _json(
            PredictResponse(predictions=response.predictions, offsets_mapping=response.offsets_mapping)
        )
    stream = bool(body.stream or params.stream)
    requests = kserve.generate_requests(model, rid, kserve.prompts(items, where), params, stream)
    if stream:
        return stream_response(model, requests, V1Stream(requests[0].params.n, single=len(requests) == 1))
    responses = kserve.generate_all(model, requests)
    predictions: list[Any] = [
        r.choices[0].text if len(r.choices) == 1 else [c.text for c in r.choices] for r in responses
    ]
    return _json(PredictResponse(predictions=predictions))
