"""The router's Flask application factory.

``create_app(settings)`` runs a list of named steps; nothing connects to
Redis, the registry or a worker until a request needs it, so the app can be
built at import time by ``wsgi.py`` and in tests without any service up.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from infergate_common.errors import (
    InfergateError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)
from infergate_common.logs import request_context

from . import public_errors
from .auth import guard
from .protocols import kserve
from .protocols.openai import batches as openai_batches
from .protocols.openai import routes as openai_routes
from .protocols.v1 import routes as v1_routes
from .protocols.v2 import routes as v2_routes
from .services import EXTENSION, RouterServices, services
from .settings import RouterSettings

log = logging.getLogger("infergate_router")

Renderer = Callable[[InfergateError], Response]

# Each protocol renders errors in its own shape; requests that matched no
# route are told apart by their path.
RENDERERS: dict[str, Renderer] = {
    "openai": openai_routes.render_error,
    "openai_hints": openai_routes.render_error,
    "v1": v1_routes.render_error,
    "v2": v2_routes.render_error,
}

# Reachable without an API key: liveness and readiness probes. Metrics are
# served on their own port by the gunicorn master (gunicorn_conf.py), which
# the Ingress never routes to.
OPEN_PATHS = frozenset({"/", "/readyz", "/v2/health/live", "/v2/health/ready"})

# Retry-After of a 429 or 503 that does not name its own.
DEFAULT_RETRY_AFTER_S = 1.0

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def renderer_for_request() -> Renderer:
    renderer = RENDERERS.get(request.blueprint or "")
    if renderer is not None:
        return renderer
    if request.path.startswith("/openai/"):
        return openai_routes.render_error
    return kserve.render_error


# ------------------------------------------------------------------- steps


def configure(app: Flask, settings: RouterSettings) -> None:
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = RouterServices.build(settings)


def register_request_hooks(app: Flask) -> None:
    settings: RouterSettings = app.extensions[EXTENSION].settings

    @app.before_request
    def start() -> None:
        g.started_at = time.monotonic()
        given = request.headers.get("X-Request-Id", "")
        g.client_request_id = bool(_SAFE_REQUEST_ID.match(given))
        g.request_id = given if g.client_request_id else uuid.uuid4().hex
        g.log_context = request_context(g.request_id)
        g.log_context.__enter__()
        parts = services()
        parts.changes.ensure_started()
        parts.load.ensure_started()

    @app.before_request
    def check_body_size() -> None:
        length = request.content_length
        # A view may allow larger bodies (file uploads) with a ``max_body_bytes`` attribute.
        view = app.view_functions.get(request.endpoint or "")
        limit = getattr(view, "max_body_bytes", settings.max_body_bytes)
        if length is not None and length > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")

    @app.before_request
    def authenticate() -> None:
        if request.path not in OPEN_PATHS:
            guard.authenticate()

    @app.after_request
    def finish(response: Response) -> Response:
        guard.finish(response)
        request_id = g.get("request_id")
        if request_id:
            response.headers["X-Request-Id"] = request_id
        started = g.get("started_at")
        if started is not None:
            seconds = time.monotonic() - started
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            services().metrics.request(route, request.method, response.status_code, seconds)
            log.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
        return response

    @app.teardown_request
    def leave_context(_: BaseException | None) -> None:
        guard.teardown()
        context = g.pop("log_context", None)
        if context is not None:
            # A context entered in another greenlet cannot be reset from this one.
            with contextlib.suppress(ValueError):
                context.__exit__(None, None, None)


def register_blueprints(app: Flask) -> None:
    app.register_blueprint(openai_routes.blueprint)
    app.register_blueprint(openai_routes.hints)
    app.register_blueprint(openai_batches.blueprint)
    app.register_blueprint(v1_routes.blueprint)
    app.register_blueprint(v2_routes.blueprint)

    @app.get("/")
    def alive() -> Response:
        return jsonify({"status": "alive"})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        """Whether this router process can serve: not draining, Redis and the
        registry reachable (checked at most once a second)."""
        ok, reason = services().readiness.check()
        if ok:
            return jsonify({"ready": True}), 200
        return jsonify({"ready": False, "reason": reason}), 503


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(InfergateError)
    def infergate_error(error: InfergateError) -> Response:
        if error.status >= 500:
            log.warning("request failed: %s", error.message, extra={"status": error.status})
        response = renderer_for_request()(public_errors.public(error, g.get("request_id")))
        retry_after = error.retry_after_s
        if retry_after is None and response.status_code in (429, 503):
            # Overloaded or a dependency briefly away: clients back off and come back.
            retry_after = DEFAULT_RETRY_AFTER_S
        if retry_after is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        converted: InfergateError
        if status == 404:
            converted = NotFound(f"Not found: {request.method} {request.path}")
        elif status == 413:
            converted = PayloadTooLarge(
                f"request body exceeds the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
            )
        else:
            converted = InvalidRequest(error.description or error.name, status=status)
        return renderer_for_request()(converted)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unexpected router error")
        message = public_errors.with_request_id("internal error", g.get("request_id"))
        return renderer_for_request()(InfergateError(message))


STEPS: tuple[Callable[[Flask], None], ...] = (
    register_request_hooks,
    register_blueprints,
    register_error_handlers,
)


def create_app(settings: RouterSettings) -> Flask:
    app = Flask("infergate_router")
    configure(app, settings)
    for step in STEPS:
        step(app)
    return app
