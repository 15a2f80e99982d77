"""Writes that skip gevent's ``sendall`` when the kernel takes the bytes at once.

gevent's ``sendall`` asks the kernel for the socket's send-buffer size (a
``getsockopt`` call) and sets up its timeout bookkeeping on every call. The
router's writes are small (a request to a worker, a response, one token's
chunk) and the kernel nearly always takes them whole. :func:`sendall`
offers the bytes to the non-blocking OS socket under gevent's first; only
what the kernel did not take goes through gevent's ``sendall``, which waits
for room (and times out) as before. Any other socket (TLS, a standard-library
socket in tests and tools) takes its own ``sendall``.
"""

from __future__ import annotations

from typing import Any

import gevent.socket


def sendall(sock: Any, data: bytes | bytearray) -> None:
    """``sock.sendall(data)``, without gevent's per-call work when the
    kernel takes everything at once."""
    sent = 0
    if type(sock) is gevent.socket.socket:
        try:
            sent = sock._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:] if sent else data)
