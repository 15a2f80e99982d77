"""The router's Flask application factory.

``create_app(settings)`` runs a list of named steps; nothing connects to
Redis, the registry or a worker until a request needs it, so the app can be
built at import time by ``wsgi.py`` and in tests without any service up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from infergate_common.errors import InfergateError, InvalidRequest, NotFound

from . import request_cycle
from .auth import guard
from .protocols import kserve
from .protocols.openai import batches as openai_batches
from .protocols.openai import routes as openai_routes
from .protocols.v1 import routes as v1_routes
from .protocols.v2 import routes as v2_routes
from .request_cycle import Renderer
from .request_scope import current_or_none, open_scope
from .services import EXTENSION, RouterServices, services
from .settings import RouterSettings

log = logging.getLogger("infergate_router")

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


def renderer_for_request() -> Renderer:
    renderer = RENDERERS.get(request.blueprint or "")
    if renderer is not None:
        return renderer
    if request.path.startswith("/openai/"):
        return openai_routes.render_error
    return kserve.render_error


def _request_id() -> str | None:
    scope = current_or_none()
    return scope.request_id if scope is not None else None


# ------------------------------------------------------------------- steps


def configure(app: Flask, settings: RouterSettings) -> None:
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = RouterServices.build(settings)


def register_request_hooks(app: Flask) -> None:
    parts: RouterServices = app.extensions[EXTENSION]
    settings = parts.settings

    @app.before_request
    def start() -> None:
        """The request's scope; then the body size (a view may allow larger
        bodies, file uploads, with a ``max_body_bytes`` attribute) and the
        caller's key."""
        view = app.view_functions.get(request.endpoint or "")
        limit = getattr(view, "max_body_bytes", settings.max_body_bytes)
        g.scope = open_scope(parts, request.environ, request_cycle.BodyReader(request.environ, limit))
        request_cycle.check_body_size(request.content_length, limit)
        if request.path not in OPEN_PATHS:
            guard.authenticate()

    @app.after_request
    def finish(response: Response) -> Response:
        scope = current_or_none()
        if scope is None:
            return response
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        request_cycle.finish(scope, response, route)
        return response

    @app.teardown_request
    def leave_context(_: BaseException | None) -> None:
        opened = g.pop("scope", None)
        if opened is not None:
            scope, token = opened
            request_cycle.end(scope, token)


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
        return request_cycle.error_response(renderer_for_request(), error, _request_id())

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        converted: InfergateError
        if status == 404:
            converted = NotFound(f"Not found: {request.method} {request.path}")
        elif status == 413:
            converted = request_cycle.too_large(app.config["MAX_CONTENT_LENGTH"])
        else:
            converted = InvalidRequest(error.description or error.name, status=status)
        return renderer_for_request()(converted)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        return request_cycle.unexpected_response(renderer_for_request(), _request_id())


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
