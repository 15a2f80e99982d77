"""What the router knows about the request it is serving, the same on both
of its request paths: Flask's (every route) and the fast path's (the hot
OpenAI POST routes, see :mod:`.fast_path`).

A :class:`RequestScope` is opened before anything else runs for a request
and closed after its response is built; the code between reaches it
through :func:`current` (a context variable: one lookup, no proxy), never
through Flask's ``g`` or ``request``. A streamed body is iterated after the
scope closed, so whatever it needs is read from the scope before.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infergate_common.logs import request_context

from .usage import TokenCount

if TYPE_CHECKING:
    from .auth.guard import Admission, Principal
    from .services import RouterServices

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Headers the WSGI environ keeps without the HTTP_ prefix.
_UNPREFIXED = {"CONTENT_TYPE", "CONTENT_LENGTH"}


@dataclass(eq=False)
class RequestScope:
    services: RouterServices
    environ: dict[str, Any]
    # The body, read once and kept (each request path bounds it its own way).
    body: Callable[[], bytes]
    request_id: str
    # Whether the client named the request (a valid ``X-Request-Id``).
    client_request_id: bool
    started_at: float
    principal: Principal | None = None
    usage: TokenCount = field(default_factory=TokenCount)
    admission: Admission | None = None
    # Run when the scope closes (context variables set for the request).
    on_close: list[Callable[[], None]] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.environ["REQUEST_METHOD"]  # type: ignore[no-any-return]

    @property
    def path(self) -> str:
        return self.environ.get("PATH_INFO", "")  # type: ignore[no-any-return]

    def header(self, name: str) -> str | None:
        key = name.upper().replace("-", "_")
        if key not in _UNPREFIXED:
            key = "HTTP_" + key
        return self.environ.get(key)


_current: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "infergate_request_scope", default=None
)
ScopeToken = contextvars.Token[RequestScope | None]


def current() -> RequestScope:
    scope = _current.get()
    if scope is None:
        raise RuntimeError("no request is being served")
    return scope


def current_or_none() -> RequestScope | None:
    return _current.get()


def open_scope(
    services: RouterServices, environ: dict[str, Any], read_body: Callable[[], bytes]
) -> tuple[RequestScope, ScopeToken]:
    """The scope of a request that starts now: its id (the client's
    ``X-Request-Id`` when it is a safe one), its log context, and the
    process's background parts started on the first request."""
    given = environ.get("HTTP_X_REQUEST_ID", "")
    client_named = bool(given) and bool(_SAFE_REQUEST_ID.match(given))
    # 128 random bits in hex, as uuid4().hex but without building a UUID (a quarter of the time).
    request_id = given if client_named else os.urandom(16).hex()
    scope = RequestScope(services, environ, read_body, request_id, client_named, time.monotonic())
    log_context = request_context(request_id)
    log_context.__enter__()
    scope.on_close.append(lambda: log_context.__exit__(None, None, None))
    services.changes.ensure_started()
    services.load.ensure_started()
    return scope, _current.set(scope)


def close_scope(scope: RequestScope, token: ScopeToken) -> None:
    for action in reversed(scope.on_close):
        # A context variable set in another greenlet cannot be reset from this one.
        with contextlib.suppress(ValueError):
            action()
    scope.on_close.clear()
    try:
        _current.reset(token)
    except ValueError:
        _current.set(None)
