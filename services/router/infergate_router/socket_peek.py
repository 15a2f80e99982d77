"""A look at what a socket holds, without reading it and without waiting.

gevent's ``select`` with a timeout of 0 (how a library usually asks "is
this socket readable now?") also yields to the event loop on every call: a
switch to the hub and back, on the router's hot path twice per request (the
pooled worker connection's liveness, the client's). One ``recv`` with
``MSG_PEEK | MSG_DONTWAIT`` on the OS socket under gevent's answers the same
question in one system call.
"""

from __future__ import annotations

import socket
from typing import Any

from gevent import monkey

# The system call, never gevent's (which yields to the loop).
_select = monkey.get_original("select", "select")
# As a plain int: or-ing the two flags (an enum) costs more than the call.
_PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


def peek(sock: Any) -> bytes | None:
    """The first byte waiting on ``sock`` (left there), ``b""`` when the
    peer closed the connection, None when nothing has arrived. Other
    failures raise ``OSError`` (or ``ValueError`` for a closed socket)."""
    raw = getattr(sock, "_sock", None)  # gevent's socket wraps the OS one, non-blocking
    if raw is None:
        # A socket of the standard library (no gevent): with a timeout set,
        # its recv waits for data whatever the flags say.
        if not _select([sock], [], [], 0)[0]:
            return None
        raw = sock
    try:
        data: bytes = raw.recv(1, _PEEK_NOW)
    except (BlockingIOError, InterruptedError):
        return None
    return data
