"""The OpenAI blueprint: ``/openai/v1/models``, ``/completions``,
``/chat/completions``, ``/embeddings``, and the 404 hints for the paths
clients reach when their ``base_url`` lacks ``/openai/v1``."""

from __future__ import annotations

import time

from flask import Blueprint, Response, request
from pydantic import BaseModel

from infergate_common.errors import InfergateError, InvalidRequest, NotFound, Overloaded
from infergate_common.registry_api import ModelRecord
from infergate_common.worker_api import (
    DetokenizeRequest,
    EncodeRequest,
    EncodeResponse,
    GenerateRequest,
    GenerateResponse,
)

from ... import limits
from ...auth import guard
from ...client_watch import client_watch
from ...request_scope import current
from ...services import services
from ..edge import ENTRY_ID, parse_body, reachable_models, ready, request_id, resolve_model, run_all
from ..streaming import replay_response, stream_response
from . import unsupported
from .models import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ErrorBody,
    ErrorDetail,
    ModelCard,
    ModelCardList,
    StreamNote,
)
from .streaming import ChatStream, CompletionStream
from .translate import (
    chat_completion,
    chat_generate_request,
    chat_params,
    completion,
    completion_params,
    completion_prompts,
    embedding_inputs,
    embeddings,
    require_chat,
    require_embeddings,
    require_generative,
)
from .unsupported import refuse_unsupported

blueprint = Blueprint("openai", __name__, url_prefix="/openai/v1")
hints = Blueprint("openai_hints", __name__)

NEAR_MISSES = (
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/completions",
    "/completions",
    "/v1/embeddings",
    "/embeddings",
)


def render_error(error: InfergateError) -> Response:
    body = ErrorBody(
        error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)
    )
    # OpenAI clients back off and retry on 429; KServe's answer to the same is 503.
    status = 429 if isinstance(error, Overloaded) else error.status
    return Response(body.model_dump_json(), status=status, mimetype="application/json")


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), mimetype="application/json")


def _card(model: ModelRecord) -> ModelCard:
    return ModelCard(
        id=model.name,
        created=model.created,
        task=model.task.value,
        backend=model.backend.value,
        backend_reason=model.backend_reason,
        max_model_len=model.max_model_len,
        ready=ready(model),
        aliases=model.aliases,
    )


@blueprint.get("/models")
def list_models() -> Response:
    return _json(ModelCardList(data=[_card(m) for m in reachable_models()]))


@blueprint.get("/models/<path:name>")
def get_model(name: str) -> Response:
    return _json(_card(resolve_model(name)))


def _generate(model: ModelRecord, req: GenerateRequest) -> GenerateResponse:
    svc = services()
    response = svc.dispatcher.generate(model, req, client_watch(current().environ))
    svc.metrics.tokens(model.name, response.usage.prompt_tokens, response.usage.completion_tokens)
    return response


@blueprint.post("/completions")
def completions() -> Response:
    body = parse_body(CompletionRequest)
    refuse_unsupported(body, unsupported.COMPLETIONS)
    model = resolve_model(body.model)
    require_generative(model, "/completions")
    limits.check_logprobs(body.logprobs, "logprobs")
    params = completion_params(body, model)
    limits.check_generation(params, model)
    prompts = completion_prompts(body.prompt)
    limits.check_prompts(len(prompts))
    rid = request_id()
    created = int(time.time())
    ids = [rid] if len(prompts) == 1 else [f"{rid}-{i}" for i in range(len(prompts))]
    requests = [
        GenerateRequest(request_id=wid, prompt=prompt, params=params, stream=bool(body.stream))
        for wid, prompt in zip(ids, prompts, strict=True)
    ]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        formatter = CompletionStream(
            f"cmpl-{rid}", created, model.name, params.n, include_usage, single=len(requests) == 1
        )
        note = StreamNote(
            kind="completion",
            model=model.name,
            created=created,
            n=params.n,
            include_usage=include_usage,
            owner=guard.owner(),
        )
        return stream_response(model, requests, formatter, note.model_dump_json())
    responses = run_all([lambda req=req: _generate(model, req) for req in requests])  # type: ignore[misc]
    return _json(completion(rid, created, model.name, params.n, responses))


@blueprint.post("/chat/completions")
def chat_completions() -> Response:
    body = parse_body(ChatCompletionRequest)
    refuse_unsupported(body, unsupported.CHAT)
    model = resolve_model(body.model)
    require_chat(model)
    limits.check_logprobs(body.top_logprobs, "top_logprobs")
    params = chat_params(body)
    limits.check_generation(params, model)
    rid = request_id()
    created = int(time.time())
    req = chat_generate_request(rid, body, params)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        formatter = ChatStream(
            f"chatcmpl-{rid}",
            created,
            model.name,
            params.n,
            include_usage,
            single=True,
            resumed=current().header("Last-Event-ID") is not None,
        )
        note = StreamNote(
            kind="chat",
            model=model.name,
            created=created,
            n=params.n,
            include_usage=include_usage,
            owner=guard.owner(),
        )
        return stream_response(model, [req], formatter, note.model_dump_json())
    return _json(chat_completion(rid, created, model.name, _generate(model, req)))


@blueprint.get("/streams/<public_id>")
def resume_stream(public_id: str) -> Response:
    """Replay an OpenAI stream from ``Last-Event-ID`` (see ``protocols.streaming``);
    only the key that opened a stream reaches it (the id is looked up under
    the caller's key, and the note names its owner)."""
    last_id = current().header("Last-Event-ID") or request.args.get("last_event_id")
    if last_id is not None and not ENTRY_ID.match(last_id.strip()):
        raise InvalidRequest("Last-Event-ID must be a stream entry id such as 1700000000000-0")
    missing = NotFound(f"no stream for request {public_id}; it ended long ago or never began")
    if guard.NAMESPACE_SEPARATOR in public_id:
        raise missing
    request_id = guard.internal_request_id(public_id)
    raw = services().reader.read_note(services().dispatcher.note_key(request_id))
    if raw is None:
        raise missing
    note = StreamNote.model_validate_json(raw)
    if note.owner != guard.owner():
        raise missing
    resumed = last_id is not None
    formatter: CompletionStream | ChatStream
    if note.kind == "chat":
        formatter = ChatStream(
            f"chatcmpl-{request_id}",
            note.created,
            note.model,
            note.n,
            note.include_usage,
            single=True,
            resumed=resumed,
        )
    else:
        formatter = CompletionStream(
            f"cmpl-{request_id}", note.created, note.model, note.n, note.include_usage, single=True
        )
    return replay_response(request_id, note.model, formatter, (last_id or "0-0").strip())


@blueprint.post("/embeddings")
def create_embeddings() -> Response:
    body = parse_body(EmbeddingRequest)
    refuse_unsupported(body, unsupported.EMBEDDINGS)
    model = resolve_model(body.model)
    require_embeddings(model)
    texts, tokens = embedding_inputs(body.input)
    limits.check_embedding_inputs(len(texts) + len(tokens))
    svc = services()
    rid = request_id()

    def send(url: str) -> EncodeResponse:
        inputs = texts or [
            svc.workers.detokenize(url, DetokenizeRequest(tokens=ids)).prompt for ids in tokens
        ]
        return svc.workers.encode(
            url, EncodeRequest(request_id=rid, inputs=inputs, dimensions=body.dimensions)
        )

    response = svc.dispatcher.call(model, send)
    svc.metrics.tokens(model.name, response.usage.prompt_tokens, 0)
    return _json(embeddings(model.name, response, body.encoding_format or "float"))


def near_miss() -> Response:
    raise NotFound(
        f"Not found: {request.path}. The OpenAI API of this server is under /openai/v1: "
        f"use base_url='{request.host_url}openai/v1' (for example "
        f"POST {request.host_url}openai/v1{request.path.removeprefix('/v1')}).",
        code="not_found",
    )


for _path in NEAR_MISSES:
    hints.add_url_rule(
        _path, endpoint=_path.strip("/").replace("/", "_"), view_func=near_miss, methods=["GET", "POST"]
    )
