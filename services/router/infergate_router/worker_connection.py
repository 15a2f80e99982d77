"""Keep-alive HTTP/1.1 connections to one worker, for the router's calls to
the internal worker API: a POST with a body of known length, answered by
the worker's server (waitress) with a status line, a few headers and a
body of known length (or chunked, or up to the end of the connection).

Nothing more general is needed, and each step a general client takes costs
the router CPU on every request: building and merging header objects,
parser callbacks per header, a timeout object per read. Here the request's
fixed header fields are prepared once, a request goes out in one write
(offered to the socket before gevent's ``sendall``, :mod:`.socket_send`), and the
answer is usually read in one ``recv``, its head split with ``bytes``
methods (``python -m bench.http_clients`` compares this with
``geventhttpclient``, ``urllib3`` and ``requests``).

Errors are ``OSError``s, as a socket's own: :class:`ConnectFailed` when the
connection could not be opened (nothing was sent), ``TimeoutError`` when
the worker did not answer in time, :class:`InvalidResponse` for an answer
that is not HTTP/1.x or ends too soon. A failed connection is closed, never
reused; nothing is retried (a generation must not start twice).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import gevent.lock
from gevent import monkey

from . import socket_send
from .socket_peek import peek

# Bounds of an answer's head: the worker's are a few hundred bytes.
MAX_HEAD_BYTES = 65536
READ_BYTES = 65536
# Statuses answered without a body (RFC 9112, section 6.3).
_NO_BODY = frozenset((204, 304))


class ConnectFailed(OSError):
    """Opening the connection failed (refused, unresolvable, timed out):
    nothing was sent."""


class InvalidResponse(OSError):
    """The worker's answer was not HTTP/1.x, or the connection ended before
    the answer was complete."""


class WorkerConnections:
    """Connections to ``host:port``, at most ``size`` open at once (a caller
    past that waits for one), idle ones kept for the next call."""

    def __init__(
        self, host: str, port: int, connect_timeout_s: float, size: int, headers: dict[str, str]
    ) -> None:
        self.address = (host, port)
        self.connect_timeout_s = connect_timeout_s
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        # Everything of a request's head after its request line but its length.
        self._fields = f"Host: {host}:{port}\r\n{fields}Content-Length: ".encode("latin-1")
        self._idle: list[socket.socket] = []
        # gevent's (in C) under gevent, where threading's is a Python condition.
        self._slots: Any = (
            gevent.lock.BoundedSemaphore(size)
            if monkey.is_module_patched("threading")
            else threading.BoundedSemaphore(size)
        )
        self._closed = False

    def post(self, path: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """The status and body of the answer to a POST of ``body`` to ``path``."""
        # One format per call: paths carry request ids (cancels), so nothing is kept per path.
        message = b"POST %b HTTP/1.1\r\n%b%d\r\n\r\n%b" % (
            path.encode("latin-1"),
            self._fields,
            len(body),
            body,
        )
        self._slots.acquire()
        try:
            sock = self._connection()
            try:
                sock.settimeout(timeout_s)
                socket_send.sendall(sock, message)
                status, payload, keep = read_response(sock)
            except BaseException:
                sock.close()
                raise
            if keep and not self._closed:
                self._idle.append(sock)
            else:
                sock.close()
            return status, payload
        finally:
            self._slots.release()

    def _connection(self) -> socket.socket:
        """An idle connection the worker has not closed, else a new one."""
        while self._idle:
            sock = self._idle.pop()
            try:
                if sock.fileno() >= 0 and peek(sock) is None:
                    return sock
            except (OSError, ValueError):
                pass
            # Closed by the worker, or holding bytes nobody asked for.
            sock.close()
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout_s)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.address[0]}:{self.address[1]}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


def read_response(sock: socket.socket) -> tuple[int, bytes, bool]:
    """Read one answer: (status, body, whether the connection may be reused)."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(data) > MAX_HEAD_BYTES:
            raise InvalidResponse("the worker's answer has an over-long head")
        chunk = sock.recv(READ_BYTES)
        if not chunk:
            raise InvalidResponse("the worker closed the connection before it answered")
        data += chunk
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise InvalidResponse(f"the worker's answer is not HTTP/1.x: {lines[0][:80]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    connection = b""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise InvalidResponse(f"the worker's answer has a bad Content-Length: {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
        elif name == b"connection":
            connection = value.lower()
    # HTTP/1.1 keeps the connection unless told otherwise, HTTP/1.0 only when told.
    keep = b"close" not in connection if parts[0] == b"HTTP/1.1" else b"keep-alive" in connection
    rest = data[end + 4 :]
    if status in _NO_BODY or 100 <= status < 200:
        return status, b"", keep
    if chunked:
        body, rest = _read_chunked(sock, rest)
        return status, body, keep and not rest
    if length is None:
        return status, _read_to_end(sock, rest), False
    while len(rest) < length:
        chunk = sock.recv(max(READ_BYTES, length - len(rest)))
        if not chunk:
            raise InvalidResponse("the worker closed the connection in the middle of its answer")
        rest += chunk
    # Bytes past the body were never asked for: the connection is not reused.
    return status, rest[:length], keep and len(rest) == length


def _read_to_end(sock: socket.socket, data: bytes) -> bytes:
    parts = [data]
    while chunk := sock.recv(READ_BYTES):
        parts.append(chunk)
    return b"".join(parts)


def _read_chunked(sock: socket.socket, data: bytes) -> tuple[bytes, bytes]:
    """A chunked body and what follows it."""
    buffer = bytearray(data)
    parts: list[bytes] = []

    def fill(at_least: int) -> None:
        while len(buffer) < at_least:
            chunk = sock.recv(READ_BYTES)
            if not chunk:
                raise InvalidResponse("the worker closed the connection in the middle of its answer")
            buffer.extend(chunk)

    while True:
        line_end = buffer.find(b"\r\n")
        while line_end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise InvalidResponse("the worker's answer has an over-long chunk line")
            fill(len(buffer) + 1)
            line_end = buffer.find(b"\r\n")
        size_field = bytes(buffer[:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            raise InvalidResponse(f"the worker's answer has a bad chunk size: {size_field[:20]!r}") from None
        if size == 0:
            # Trailer fields, if any, up to the empty line.
            start = line_end + 2
            while True:
                trailer_end = buffer.find(b"\r\n", start)
                while trailer_end < 0:
                    fill(len(buffer) + 1)
                    trailer_end = buffer.find(b"\r\n", start)
                if trailer_end == start:
                    return b"".join(parts), bytes(buffer[trailer_end + 2 :])
                start = trailer_end + 2
        fill(line_end + 2 + size + 2)
        parts.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
        del buffer[: line_end + 2 + size + 2]
