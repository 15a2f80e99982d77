"""The HTTP side of every worker: the internal worker API over an Engine.

``create_worker_app(engine)`` builds a Flask app whose routes parse the body
into the worker API models, call the engine, and render errors with
:func:`infergate_common.errors.to_payload`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, jsonify, request
from pydantic import BaseModel, ValidationError

from .admission import Admission
from .engine import Engine
from .errors import AuthenticationFailed, InfergateError, InvalidRequest, ServiceUnavailable, to_payload
from .internal_auth import bearer, token_matches
from .logs import request_context
from .worker_api import (
    CancelResponse,
    DetokenizeRequest,
    EncodeRequest,
    GenerateRequest,
    StreamAccepted,
    TabularPredictRequest,
    TokenizeRequest,
)

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)


def _parse(model: type[ModelT]) -> ModelT:
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise InvalidRequest("the request body nests arrays and objects too deeply") from None
    if body is None:
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise InvalidRequest(
            f"{where}: {first.get('msg')}" if where else str(first.get("msg")), param=where or None
        ) from exc


def _json(model: BaseModel, status: int = 200) -> Response:
    response = Response(model.model_dump_json(), status=status, mimetype="application/json")
    return response


def readiness(engine: Engine, admission: Admission) -> tuple[bool, str]:
    """What ``/readyz`` answers: the engine's readiness, false while draining."""
    if admission.draining.is_set():
        return False, "shutting down"
    return engine.ready()


# Probes and the description of the model need no credential; every route
# that runs the model or cancels does.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/info"})


def create_worker_app(
    engine: Engine,
    stream_key: Callable[[str], str],
    admission: Admission | None = None,
    internal_token: str = "",
) -> Flask:
    """``stream_key(request_id)`` names the Redis stream of a request;
    ``admission`` bounds what the replica takes (default: the engine's
    default capacity); with ``internal_token`` set, every route but the
    probes and ``/info`` requires ``Authorization: Bearer <internal_token>``."""
    app = Flask("infergate-worker")
    admission = admission or Admission(engine, engine.default_capacity())
    app.extensions["infergate_admission"] = admission

    @app.before_request
    def check_credential() -> None:
        if not internal_token or request.path in OPEN_PATHS:
            return
        if not token_matches(internal_token, bearer(request.headers.get("Authorization"))):
            raise AuthenticationFailed("this route needs the internal credential", code="internal_credential")

    def require_ready() -> None:
        ok, reason = engine.ready()
        if not ok:
            raise ServiceUnavailable(f"model not ready: {reason}")

    @app.errorhandler(InfergateError)
    def _infergate_error(error: InfergateError) -> tuple[Response, int]:
        response = jsonify(to_payload(error))
        if error.retry_after_s is not None:
            response.headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
        return response, error.status

    @app.errorhandler(404)
    def _not_found(_: Any) -> tuple[Response, int]:
        return jsonify(to_payload(InvalidRequest("no such route", status=404))), 404

    @app.errorhandler(405)
    def _bad_method(_: Any) -> tuple[Response, int]:
        return jsonify(to_payload(InvalidRequest("method not allowed", status=405))), 405

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> tuple[Response, int]:
        log.exception("unexpected worker error")
        payload = to_payload(InfergateError(f"internal error: {type(error).__name__}: {error}"))
        return jsonify(payload), 500

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        ok, reason = readiness(engine, admission)
        if ok:
            return jsonify({"ready": True}), 200
        return jsonify({"ready": False, "reason": reason}), 503

    @app.get("/info")
    def info() -> Response:
        info = engine.info()
        # "held": what the replica holds now (calls in progress and open streams).
        extra = {**info.extra, "held": admission.held()}
        return _json(info.model_copy(update={"capacity": admission.capacity, "extra": extra}))

    @app.post("/generate")
    def generate() -> Response:
        req = _parse(GenerateRequest)
        with request_context(req.request_id):
            require_ready()
            with admission.admit(req.request_id):
                if req.stream:
                    engine.start_stream(req)
                    accepted = StreamAccepted(
                        request_id=req.request_id, stream_key=stream_key(req.request_id)
                    )
                    return _json(accepted, status=202)
                return _json(engine.generate(req))

    @app.post("/encode")
    def encode() -> Response:
        req = _parse(EncodeRequest)
        with request_context(req.request_id):
            require_ready()
            with admission.admit(req.request_id):
                return _json(engine.encode(req))

    @app.post("/predict")
    def predict() -> Response:
        req = _parse(TabularPredictRequest)
        with request_context(req.request_id):
            require_ready()
            return _json(engine.predict(req))

    @app.post("/tokenize")
    def tokenize() -> Response:
        req = _parse(TokenizeRequest)
        require_ready()
        return _json(engine.tokenize(req))

    @app.post("/detokenize")
    def detokenize() -> Response:
        req = _parse(DetokenizeRequest)
        require_ready()
        return _json(engine.detokenize(req))

    @app.post("/cancel/<request_id>")
    def cancel(request_id: str) -> Response:
        with request_context(request_id):
            return _json(CancelResponse(cancelled=engine.cancel(request_id)))

    return app
