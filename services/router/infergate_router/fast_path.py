"""The WSGI application gunicorn serves: the hot OpenAI POST routes
(``/openai/v1/completions``, ``/chat/completions``, ``/embeddings``) go
straight to their views, every other request to the Flask app.

Flask's request context, URL matching and hooks cost about as much CPU as
everything else the router does for a request. The views are the Flask
app's own, and each step Flask's hooks run is run here too, from the same
functions (:mod:`.request_cycle`, :mod:`.request_scope`, the guard): the
request's scope, the body size limit, the API key, the rate limits, errors
in OpenAI's shape with ``Retry-After``, ``X-Request-Id``, metrics and the
log line. So a request answers the same on either path
(``services/router/tests/test_fast_path.py`` holds them side by side).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response

from infergate_common.errors import InfergateError

from . import request_cycle
from .auth import guard
from .protocols.openai import routes as openai_routes
from .request_cycle import BodyReader, content_length
from .request_scope import open_scope
from .services import EXTENSION, RouterServices

StartResponse = Callable[..., Any]
View = Callable[[], Response]

# Path → (view, the route's name in metrics: Flask's rule for the same path).
HOT_ROUTES: dict[str, tuple[View, str]] = {
    "/openai/v1/completions": (openai_routes.completions, "/openai/v1/completions"),
    "/openai/v1/chat/completions": (openai_routes.chat_completions, "/openai/v1/chat/completions"),
    "/openai/v1/embeddings": (openai_routes.create_embeddings, "/openai/v1/embeddings"),
}


class FastPath:
    def __init__(self, flask_app: Flask) -> None:
        self.flask = flask_app
        self.services: RouterServices = flask_app.extensions[EXTENSION]
        self.limit = self.services.settings.max_body_bytes

    @property
    def extensions(self) -> dict[str, Any]:
        """The Flask app's (gunicorn's hooks find the services there)."""
        return self.flask.extensions

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            hot = HOT_ROUTES.get(environ.get("PATH_INFO", ""))
            if hot is not None:
                return self.serve(hot[0], hot[1], environ, start_response)
        return self.flask(environ, start_response)

    def serve(
        self, view: View, route: str, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        scope, token = open_scope(self.services, environ, BodyReader(environ, self.limit))
        try:
            try:
                request_cycle.check_body_size(content_length(environ), self.limit)
                guard.authenticate()
                response = view()
            except InfergateError as error:
                response = request_cycle.error_response(openai_routes.render_error, error, scope.request_id)
            except Exception:
                response = request_cycle.unexpected_response(openai_routes.render_error, scope.request_id)
            request_cycle.finish(scope, response, route)
        finally:
            request_cycle.end(scope, token)
        return response(environ, start_response)
