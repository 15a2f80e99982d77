"""What a replica may register: a URL of its own.

* The URL is ``http`` or ``https`` with a host, no credentials, query or
  fragment, and its host is not link-local (``169.254.0.0/16``,
  ``fe80::/10``), unspecified, multicast, or a cloud metadata name: the
  router would send users' prompts there.
* With the address check on (the default), the host must be the address
  the registration comes from (a name must resolve to it), so a pod can
  only register itself. The local stack, where every process is 127.0.0.1,
  passes the check as it is.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from infergate_common.errors import InvalidRequest, PermissionDenied

METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}
)
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def validate(url: str) -> str:
    """The URL's host, lower-cased; 400 when the URL may not be registered."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"replica url is not a valid URL: {exc}", param="url") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest("replica url must be http:// or https://", param="url")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidRequest("replica url has no host", param="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("replica url must not carry credentials", param="url")
    if parts.query or parts.fragment:
        raise InvalidRequest("replica url must not have a query or fragment", param="url")
    if port == 0:
        raise InvalidRequest("replica url has port 0", param="url")
    if host in METADATA_HOSTS:
        raise InvalidRequest("replica url names a cloud metadata service", param="url")
    address = _address(host)
    if address is not None and (
        address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address in METADATA_ADDRESSES
    ):
        raise InvalidRequest(
            "replica url points at a link-local, unspecified, multicast or metadata address", param="url"
        )
    return host


def resolves_to(host: str, remote: str) -> bool:
    """Whether ``host`` (an address or a name) is the address ``remote``."""
    wanted = _address(remote)
    if wanted is None:
        return False
    literal = _address(host)
    if literal is not None:
        return literal == wanted
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return any(_address(str(info[4][0])) == wanted for info in infos)


def check_own_address(host: str, remote: str | None) -> None:
    if not remote or not resolves_to(host, remote):
        raise PermissionDenied(
            "a replica may only register its own address: the url's host must be the address "
            "the registration comes from",
            param="url",
        )
