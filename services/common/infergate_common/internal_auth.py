"""The internal credential: a shared token the services present to each
other (``Authorization: Bearer <token>``) on the routes that change state
or run models: the registry's writes, the workers' routes.

The chart generates the token into a Secret (kept across upgrades); the
local stack generates one per checkout. A service started without one
(``INFERGATE_INTERNAL_TOKEN`` empty) accepts every caller and says so in
its log at start: that is for unit tests and nothing else.
"""

from __future__ import annotations

import hmac
import logging

HEADER = "Authorization"
SCHEME = "Bearer"


def auth_header(token: str) -> dict[str, str]:
    """The header that carries ``token``; none when there is no token."""
    return {HEADER: f"{SCHEME} {token}"} if token else {}


def bearer(value: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or ''."""
    scheme, _, token = (value or "").partition(" ")
    return token.strip() if scheme.lower() == SCHEME.lower() else ""


def token_matches(expected: str, presented: str) -> bool:
    """Constant-time comparison (``hmac.compare_digest`` runs in C)."""
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())


def warn_if_open(log: logging.Logger, service: str, token: str) -> None:
    if not token:
        log.warning(
            "%s runs without an internal credential: set INFERGATE_INTERNAL_TOKEN "
            "(the chart and `make run` do) so that only infergate's own services can call it",
            service,
        )
