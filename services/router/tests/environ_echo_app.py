"""A WSGI app for ``test_http_server.py``: answers every request with the
request's header-derived environ keys as JSON, so the same raw request can
be compared under two gunicorn worker classes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    wsgi_input = environ["wsgi.input"]
    body = wsgi_input.read() if environ.get("CONTENT_LENGTH") else b""
    seen = {
        key: value
        for key, value in environ.items()
        if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH", "PATH_INFO", "QUERY_STRING")
    }
    seen["body"] = body.decode("latin-1")
    payload = json.dumps(seen, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]
