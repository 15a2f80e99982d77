"""A WSGI app for ``test_http_server.py``: answers every request with the
request's header-derived environ keys as JSON, so the same raw request can
be compared under two gunicorn worker classes; ``/bytes?n=N&parts=K``
streams ``N`` known bytes in ``K`` parts instead (chunked, no length);
``/dated`` answers with a ``Date`` header of its own."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

APP_DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


def known_bytes(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def _parts(n: int, parts: int) -> Iterator[bytes]:
    data = known_bytes(n)
    size = -(-n // parts)
    for start in range(0, n, size):
        yield data[start : start + size]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/bytes":
        query = parse_qs(environ["QUERY_STRING"])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _parts(int(query["n"][0]), int(query["parts"][0]))
    if environ["PATH_INFO"] == "/dated":
        start_response("200 OK", [("Date", APP_DATE), ("Content-Length", "0")])
        return [b""]
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
