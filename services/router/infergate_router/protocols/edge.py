"""What every protocol does at the edge: parse the body into a pydantic
model once, name the request, and find the model it asks for."""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from infergate_common.errors import InvalidRequest, ModelNotFound
from infergate_common.registry_api import ModelRecord

from ..auth import guard
from ..limits import parse_json
from ..request_scope import current
from ..routing_policies import SESSION_HEADER, set_route_hint

ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")

ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def describe_validation(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    where = f"{prefix}{where}" if where else prefix.rstrip(".")
    message = str(first.get("msg", "invalid value"))
    return InvalidRequest(f"'{where}': {message}" if where else message, param=where or None)


def parse_body(model: type[ModelT]) -> ModelT:
    """The JSON body as ``model``; 400 for malformed JSON, nesting past
    ``max_json_depth``, wrong types or values out of range (413 comes
    earlier, from the body size limit)."""
    scope = current()
    raw = scope.body()
    if not raw.strip():
        raise InvalidRequest("the request body is empty; expected a JSON object")
    try:
        body = parse_json(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    scope.on_close.append(set_route_hint(body, {SESSION_HEADER: scope.header(SESSION_HEADER)}))
    return validate(model, body)


def validate(model: type[ModelT], value: Any, prefix: str = "") -> ModelT:
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as exc:
        raise describe_validation(exc, prefix) from exc


def request_id() -> str:
    """The id the request's worker calls and streams go by: the public id
    (``X-Request-Id``), prefixed with the caller's key id when there is one."""
    return guard.internal_request_id(current().request_id)


def client_request_id() -> bool:
    """Whether the client named the request (``X-Request-Id``)."""
    return current().client_request_id


def last_event_id() -> str | None:
    """The ``Last-Event-ID`` a reconnecting SSE client sends, validated."""
    value = current().header("Last-Event-ID")
    if value is None:
        return None
    value = value.strip()
    if not ENTRY_ID.match(value):
        raise InvalidRequest("Last-Event-ID must be a stream entry id such as 1700000000000-0")
    if not client_request_id():
        raise InvalidRequest("resuming a stream needs the X-Request-Id of the original request")
    return value


def resolve_model(name: str) -> ModelRecord:
    """The model ``name`` as this caller may reach it: a model outside the
    key's scopes is as unknown as one that does not exist. An inference
    request (a POST) is counted against the rate limits here, once its
    model is known."""
    scope = current()
    model = scope.services.directory.resolve(scope.header("Host"), name)
    if not guard.allows(model.name):
        raise ModelNotFound(name)
    if scope.method == "POST":
        guard.admit(model.name)
    return model


def reachable_models() -> list[ModelRecord]:
    models = current().services.directory.reachable(current().header("Host"))
    return [model for model in models if guard.allows(model.name)]


def ready(model: ModelRecord) -> bool:
    return any(replica.ready for replica in model.replicas)


def run_all(jobs: list[Callable[[], T]]) -> list[T]:
    """Run jobs concurrently (greenlets under gevent) and return their
    results in order; the first error raised wins."""
    if len(jobs) == 1:
        return [jobs[0]()]
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)
    # Each job sees the request's context (Flask's app and request, the log request id).
    contexts = [contextvars.copy_context() for _ in jobs]

    def run(index: int) -> None:
        try:
            results[index] = contexts[index].run(jobs[index])
        except BaseException as exc:
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return results
