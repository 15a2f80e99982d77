"""One batch line through the router's dispatch layer, imported as a library.

The same steps as an interactive request, without Flask and without the
public port: the router's OpenAI request models validate the body, its
model directory resolves the model (the router's own host: models not
restricted to their domains), its translation builds the worker request
and the OpenAI response, and its dispatcher picks the replica (fewest in
flight, the next one when a replica cannot be reached) and maps worker
errors to the one error hierarchy.

A line ends as an output line (the response body, status 200) or an error
line (its status and an OpenAI error body). 429, 502 and 503 (no capacity,
a replica gone) are retried with backoff first: the line is idempotent,
and only its first recorded result counts.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from infergate_common.errors import InfergateError, InvalidRequest, PayloadTooLarge
from infergate_common.registry_api import ModelRecord
from infergate_common.worker_api import (
    DetokenizeRequest,
    EncodeRequest,
    EncodeResponse,
    GenerateRequest,
    GenerateResponse,
)
from infergate_router.protocols.openai.models import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ErrorBody,
    ErrorDetail,
)
from infergate_router.protocols.openai.translate import (
    chat_completion,
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
from infergate_router.services import RouterServices

from .jsonl import describe, parse_line
from .objects import LineResponse, OutputLine
from .settings import BatchSettings
from .slots import ModelSlots

log = logging.getLogger(__name__)

# Worker answers that say "not now" rather than "not this request".
RETRYABLE = frozenset({429, 502, 503})

Stop = Callable[[], bool]


class Skipped(Exception):
    """The batch was cancelled or expired before the line could start."""


class LineRunner:
    def __init__(self, router: RouterServices, slots: ModelSlots, settings: BatchSettings) -> None:
        self.router = router
        self.slots = slots
        self.settings = settings
        self._endpoints: dict[str, Callable[[dict[str, Any], str, Stop], BaseModel]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
        }

    def run(
        self, batch_id: str, endpoint: str, number: int, raw: bytes, stop: Stop
    ) -> tuple[str, OutputLine]:
        """``(custom_id, line)``; the line has ``response.status_code`` 200
        when it succeeded. Raises :class:`Skipped` when ``stop()`` turned
        true before the line started."""
        line = parse_line(raw, number)
        rid = f"{batch_id}-{number}-{uuid.uuid4().hex[:8]}"
        try:
            if line.url != endpoint:
                raise InvalidRequest(
                    f"this line's url {line.url} differs from the batch's endpoint {endpoint}", param="url"
                )
            size = len(json.dumps(line.body, separators=(",", ":")).encode())
            if size > self.settings.batch_max_line_bytes:
                raise PayloadTooLarge(
                    f"request body of {size} bytes exceeds the per-request limit of "
                    f"{self.settings.batch_max_line_bytes} bytes"
                )
            if line.body.get("stream"):
                raise InvalidRequest("stream is not supported in a batch", param="stream")
            body = self._with_retries(lambda: self._endpoints[endpoint](line.body, rid, stop), stop)
            response = LineResponse(status_code=200, request_id=rid, body=body.model_dump(mode="json"))
        except InfergateError as error:
            response = _error_response(rid, error)
        except Skipped:
            raise
        except Exception as exc:
            log.exception("batch line %s of %s failed", number, batch_id)
            response = _error_response(rid, InfergateError(f"internal error: {type(exc).__name__}"))
        return line.custom_id, OutputLine(
            id=f"batch_req_{uuid.uuid4().hex}", custom_id=line.custom_id, response=response
        )

    # ------------------------------------------------------------- steps

    def _with_retries(self, call: Callable[[], BaseModel], stop: Stop) -> BaseModel:
        attempt = 0
        while True:
            try:
                return call()
            except InfergateError as error:
                if error.status not in RETRYABLE or attempt >= self.settings.batch_line_retries:
                    raise
                if stop():
                    raise Skipped() from error
                delay = min(10.0, self.settings.batch_retry_backoff_s * 2**attempt)
                log.info("batch line: %s (%s), retry in %.1fs", error.message, error.status, delay)
                time.sleep(delay)
                attempt += 1

    def _model(self, name: str) -> ModelRecord:
        return self.router.directory.resolve(None, name)

    def _dispatch(self, model: ModelRecord, stop: Stop, send: Callable[[str], Any]) -> Any:
        with self.slots.held(model, stop) as holding:
            if not holding:
                raise Skipped()
            return self.router.dispatcher.call(model, send)

    def _chat(self, raw: dict[str, Any], rid: str, stop: Stop) -> BaseModel:
        body = _validate(ChatCompletionRequest, raw)
        model = self._model(body.model)
        require_chat(model)
        req = GenerateRequest(request_id=rid, messages=body.messages, params=chat_params(body))
        response = self._dispatch(model, stop, lambda url: self.router.workers.generate(url, req))
        return chat_completion(rid, int(time.time()), model.name, response)

    def _completions(self, raw: dict[str, Any], rid: str, stop: Stop) -> BaseModel:
        body = _validate(CompletionRequest, raw)
        model = self._model(body.model)
        require_generative(model, "/completions")
        params = completion_params(body, model)
        prompts = completion_prompts(body.prompt)
        ids = [rid] if len(prompts) == 1 else [f"{rid}-{i}" for i in range(len(prompts))]
        requests = [
            GenerateRequest(request_id=wid, prompt=prompt, params=params)
            for wid, prompt in zip(ids, prompts, strict=True)
        ]
        workers = self.router.workers

        def generate(req: GenerateRequest) -> GenerateResponse:
            return self._dispatch(model, stop, lambda url: workers.generate(url, req))  # type: ignore[no-any-return]

        responses = [generate(req) for req in requests]
        return completion(rid, int(time.time()), model.name, params.n, responses)

    def _embeddings(self, raw: dict[str, Any], rid: str, stop: Stop) -> BaseModel:
        body = _validate(EmbeddingRequest, raw)
        model = self._model(body.model)
        require_embeddings(model)
        texts, tokens = embedding_inputs(body.input)
        workers = self.router.workers

        def send(url: str) -> EncodeResponse:
            inputs = texts or [
                workers.detokenize(url, DetokenizeRequest(tokens=ids)).prompt for ids in tokens
            ]
            return workers.encode(
                url, EncodeRequest(request_id=rid, inputs=inputs, dimensions=body.dimensions)
            )

        response = self._dispatch(model, stop, send)
        return embeddings(model.name, response, body.encoding_format or "float")


def _validate(model: type[Any], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "body." + ".".join(str(part) for part in first.get("loc", ()))
        raise InvalidRequest(describe(exc), param=where.rstrip(".")) from exc


def _error_response(rid: str, error: InfergateError) -> LineResponse:
    detail = ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)
    return LineResponse(status_code=error.status, request_id=rid, body=ErrorBody(error=detail).model_dump())
