"""The steps every request goes through, whichever path serves it (Flask's
hooks in ``app.py``, or :mod:`.fast_path`): the body size check, the error
response in the protocol's shape, the finish (rate-limit headers,
``X-Request-Id``, metrics, the request's log line) and the end."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flask import Response

from infergate_common.errors import InfergateError, PayloadTooLarge

from . import public_errors
from .auth import guard
from .request_scope import RequestScope, ScopeToken, close_scope

log = logging.getLogger("infergate_router")

Renderer = Callable[[InfergateError], Response]

# Retry-After of a 429 or 503 that does not name its own.
DEFAULT_RETRY_AFTER_S = 1.0


def check_body_size(length: int | None, limit: int) -> None:
    """413 for a declared body past ``limit`` (before it is read)."""
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")


def too_large(limit: int) -> PayloadTooLarge:
    """A body without a declared length that turned out past ``limit``."""
    return PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")


def content_length(environ: dict[str, Any]) -> int | None:
    raw = environ.get("CONTENT_LENGTH")
    if not raw:
        return None
    try:
        length = int(raw)
    except ValueError:
        return None
    return length if length >= 0 else None


class BodyReader:
    """The request body, read once: at most ``limit`` bytes, a longer one
    (sent without a declared length) is a 413."""

    def __init__(self, environ: dict[str, Any], limit: int) -> None:
        self.environ = environ
        self.limit = limit
        self.data: bytes | None = None

    def __call__(self) -> bytes:
        if self.data is None:
            stream = self.environ["wsgi.input"]
            length = content_length(self.environ)
            if length is not None:
                data = stream.read(length) if length else b""
            elif self.environ.get("wsgi.input_terminated") or self.environ.get("HTTP_TRANSFER_ENCODING"):
                data = stream.read(self.limit + 1)
                if len(data) > self.limit:
                    raise too_large(self.limit)
            else:
                data = b""
            self.data = data
        return self.data


def error_response(render: Renderer, error: InfergateError, request_id: str | None) -> Response:
    if error.status >= 500:
        log.warning("request failed: %s", error.message, extra={"status": error.status})
    response = render(public_errors.public(error, request_id))
    retry_after = error.retry_after_s
    if retry_after is None and response.status_code in (429, 503):
        # Overloaded or a dependency briefly away: clients back off and come back.
        retry_after = DEFAULT_RETRY_AFTER_S
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def unexpected_response(render: Renderer, request_id: str | None) -> Response:
    log.exception("unexpected router error")
    message = public_errors.with_request_id("internal error", request_id)
    return render(InfergateError(message))


def finish(scope: RequestScope, response: Response, route: str) -> Response:
    guard.finish(scope, response)
    response.headers["X-Request-Id"] = scope.request_id
    seconds = time.monotonic() - scope.started_at
    scope.services.metrics.request(route, scope.method, response.status_code, seconds)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "request",
            extra={
                "method": scope.method,
                "path": scope.path,
                "status": response.status_code,
                "duration_ms": round(seconds * 1000, 2),
            },
        )
    return response


def end(scope: RequestScope, token: ScopeToken) -> None:
    """After the response is built: an admission nothing settles yet is
    settled, and the scope is closed."""
    guard.teardown(scope)
    close_scope(scope, token)
