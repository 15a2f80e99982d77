"""The router's Redis clients, whose check before each command does not
yield to gevent's loop.

Before redis-py hands out a pooled connection it asks whether the
connection holds unread bytes or was closed by the server
(``Connection.can_read(timeout=0)``, a ``poll`` with a timeout of 0). Under
gevent that ``poll`` is gevent's: it switches to the hub and is woken by a
timeout raised into the waiting greenlet, about 34 µs of CPU on the
benchmark machine, against 85 µs for all the rest of a command's round
trip. The router pays it on every command: twice per rate-limited request
(admission, settling), once per ``XREAD`` of the stream reader, once per
stream started.

:class:`PeekingConnection` answers the common case, "nothing there", with
one ``recv(1, MSG_PEEK | MSG_DONTWAIT)`` on the OS socket
(:func:`.socket_peek.peek`), when the reply parser holds nothing either.
Everything else (bytes waiting, a closed connection, a parser with data, a
socket that is not gevent's plain TCP one) goes to redis-py's own check,
which decides as before. Only ``redis://`` URLs get it: ``rediss://`` and
``unix://`` keep redis-py's connection classes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import gevent.socket
import redis

from .socket_peek import peek


class PeekingConnection(redis.Connection):
    def can_read(self, timeout: float = 0) -> bool:
        sock = self._sock
        # hiredis's reader (redis-py's parser wherever hiredis is installed)
        # says whether it holds a reply's bytes; any other parser takes redis-py's way.
        reader = getattr(self._parser, "_reader", None)
        plain = type(sock) is gevent.socket.socket
        if timeout == 0 and plain and reader is not None and not reader.has_data():
            try:
                if peek(sock) is None:
                    return False
            except (OSError, ValueError):
                pass  # redis-py's own check meets the same failure and handles it
        return bool(super().can_read(timeout))


def _options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    if urlsplit(url).scheme == "redis":
        return {**options, "connection_class": PeekingConnection}
    return options


def blocking_pool(url: str, **options: Any) -> redis.BlockingConnectionPool:
    """``redis.BlockingConnectionPool.from_url(url, **options)``, with
    :class:`PeekingConnection` for a ``redis://`` URL."""
    return redis.BlockingConnectionPool.from_url(url, **_options(url, options))


def client(url: str, **options: Any) -> redis.Redis:
    """``redis.Redis.from_url(url, **options)``, with
    :class:`PeekingConnection` for a ``redis://`` URL."""
    return redis.Redis.from_url(url, **_options(url, options))
