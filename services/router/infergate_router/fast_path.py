"""The WSGI application gunicorn serves: the hot POST routes go straight to
their views, every other request to the Flask app. The hot routes are the
OpenAI ones (``/openai/v1/completions``, ``/chat/completions``,
``/embeddings``) and KServe's predict calls (v1 ``/v1/models/<name>:predict``,
v2 ``/v2/models/<name>[/versions/<version>]/infer``).

Flask's request context, URL matching and hooks cost about as much CPU as
everything else the router does for a request. The views are the Flask
app's own, and each step Flask's hooks run is run here too, from the same
functions (:mod:`.request_cycle`, :mod:`.request_scope`, the guard): the
request's scope, the body size limit, the API key, the rate limits, errors
in the protocol's shape with ``Retry-After``, ``X-Request-Id``, metrics and
the log line. So a request answers the same on either path
(``services/router/tests/test_fast_path.py`` holds them side by side).
A path with a parameter is matched as Flask's rule matches it (a parameter
is one or more characters other than ``/``, decoded as UTF-8); anything
unusual, a doubled slash or a trailing one, is Flask's to answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response

from infergate_common.errors import InfergateError

from . import request_cycle
from .auth import guard
from .protocols.openai import routes as openai_routes
from .protocols.v1 import routes as v1_routes
from .protocols.v2 import routes as v2_routes
from .request_cycle import BodyReader, Renderer, content_length
from .request_scope import open_scope
from .services import EXTENSION, RouterServices

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class HotRoute:
    """A Flask route served here: its view, its rule (the route's name in
    metrics, as Flask names it) and the renderer of its errors."""

    view: Callable[..., Response]
    rule: str
    render: Renderer


def _openai(view: Callable[..., Response], rule: str) -> HotRoute:
    return HotRoute(view, rule, openai_routes.render_error)


# Paths without parameters: looked up whole.
EXACT_ROUTES: dict[str, HotRoute] = {
    route.rule: route
    for route in (
        _openai(openai_routes.completions, "/openai/v1/completions"),
        _openai(openai_routes.chat_completions, "/openai/v1/chat/completions"),
        _openai(openai_routes.create_embeddings, "/openai/v1/embeddings"),
    )
}

# Paths with parameters, by the prefix they share: the pattern a rule's
# parameters match in Flask (its ``string`` converter, ``[^/]+``).
PATTERN_ROUTES: dict[str, tuple[tuple[re.Pattern[str], HotRoute], ...]] = {
    "/v1/models/": (
        (
            re.compile(r"/v1/models/(?P<name>[^/]+):predict"),
            HotRoute(v1_routes.predict, "/v1/models/<name>:predict", v1_routes.render_error),
        ),
    ),
    "/v2/models/": (
        (
            re.compile(r"/v2/models/(?P<name>[^/]+)/infer"),
            HotRoute(v2_routes.infer, "/v2/models/<name>/infer", v2_routes.render_error),
        ),
        (
            re.compile(r"/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/infer"),
            HotRoute(v2_routes.infer, "/v2/models/<name>/versions/<version>/infer", v2_routes.render_error),
        ),
    ),
}
PREFIX_LENGTH = len("/v1/models/")
assert all(len(prefix) == PREFIX_LENGTH for prefix in PATTERN_ROUTES)


def hot_route(path: str) -> tuple[HotRoute, dict[str, str]] | None:
    """The hot route a POST to ``path`` is for, with its parameters."""
    exact = EXACT_ROUTES.get(path)
    if exact is not None:
        return exact, {}
    for pattern, route in PATTERN_ROUTES.get(path[:PREFIX_LENGTH], ()):
        match = pattern.fullmatch(path)
        if match is not None:
            return route, {key: _decoded(value) for key, value in match.groupdict().items()}
    return None


def _decoded(value: str) -> str:
    """A path parameter as Flask gives it: WSGI carries the path's bytes as
    latin-1, the URL's characters are UTF-8 (as ``werkzeug`` decodes them)."""
    return value if value.isascii() else value.encode("latin-1").decode("utf-8", "replace")


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
            hot = hot_route(environ.get("PATH_INFO", ""))
            if hot is not None:
                return self.serve(hot[0], hot[1], environ, start_response)
        return self.flask(environ, start_response)

    def serve(
        self, route: HotRoute, args: dict[str, str], environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        scope, token = open_scope(self.services, environ, BodyReader(environ, self.limit))
        try:
            try:
                request_cycle.check_body_size(content_length(environ), self.limit)
                guard.authenticate()
                response = route.view(**args)
            except InfergateError as error:
                response = request_cycle.error_response(route.render, error, scope.request_id)
            except Exception:
                response = request_cycle.unexpected_response(route.render, scope.request_id)
            request_cycle.finish(scope, response, route.rule)
        finally:
            request_cycle.end(scope, token)
        return start(response, environ, start_response)


def start(response: Response, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """``response(environ, start_response)`` for any response; for a whole
    body in memory (every answer but a stream) its status, headers and body
    handed over as they are. For such a response werkzeug's own call (a
    copy of the headers, a look for ``Location`` headers to rewrite, the
    body wrapped to close it) changes nothing but costs about 14 µs."""
    headers = response.headers
    if (
        response.is_sequence
        and not response._on_close
        and not response.direct_passthrough
        and response.status_code >= 200
        and response.status_code not in (204, 304)
        and _length_without_location(headers)
    ):
        start_response(response.status, headers.to_wsgi_list())
        return response.response  # type: ignore[return-value]
    return response(environ, start_response)


def _length_without_location(headers: Iterable[tuple[str, str]]) -> bool:
    """A ``Content-Length`` header and neither ``Location`` nor
    ``Content-Location``, in one pass (``in`` on werkzeug's headers raises
    and catches a ``KeyError`` for each name it does not find)."""
    length = False
    for name, _ in headers:
        lowered = name.lower()
        if lowered == "content-length":
            length = True
        elif lowered == "location" or lowered == "content-location":
            return False
    return length
