"""The load generator only ever targets this machine."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class NotLoopback(ValueError):
    pass


def require_loopback(url: str) -> str:
    """Return ``url`` when every address its host resolves to is a loopback
    address; raise :class:`NotLoopback` otherwise."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https", "redis") or not host:
        raise NotLoopback(f"not an http(s) or redis URL: {url!r}")
    try:
        infos = socket.getaddrinfo(host, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise NotLoopback(f"cannot resolve {host!r}: {exc}") from exc
    addresses = {str(info[4][0]) for info in infos}
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if not addresses or outside:
        raise NotLoopback(f"refusing a non-loopback target {url!r} ({', '.join(outside) or 'no address'})")
    return url
