"""What a client may read in an error: never an internal URL, host name,
address, or another process's exception text.

Errors of status 500 and above are rewritten at the edge: addresses and
URLs are cut out of the router's own messages and the request id is
appended, so the detail can be found in the logs (where the original
message goes). Errors of the worker's own making (its 5xx bodies, its
stream error events) are replaced by a plain sentence by the worker client
and the stream relay; a client's 4xx is about its own request and is kept.
"""

from __future__ import annotations

import copy
import re

from infergate_common.errors import InfergateError

_INTERNAL = re.compile(
    r"""
    \b[a-z][a-z0-9+.-]*://[^\s'"<>)]+          # any URL
    | \[[0-9a-f:.]+\](?::\d+)?                 # a bracketed IPv6 address
    | \b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b     # an IPv4 address, with its port
    | \b[a-z0-9-]+(?:\.[a-z0-9-]+)*:\d{2,5}\b   # host:port
    """,
    re.IGNORECASE | re.VERBOSE,
)

# What a worker's failure says to the client, by status.
WORKER_FAILURE = {
    500: "the model's worker failed on this request",
    502: "the model's worker answered something unexpected",
    503: "the model's replica is not ready",
    504: "the model's worker did not answer in time",
}


def scrub(text: str) -> str:
    return _INTERNAL.sub("<internal>", text)


def with_request_id(message: str, request_id: str | None) -> str:
    return f"{message} (request id {request_id})" if request_id else message


def public(error: InfergateError, request_id: str | None) -> InfergateError:
    """The error as the client sees it (a copy; 4xx unchanged)."""
    if error.status < 500:
        return error
    shown = copy.copy(error)
    shown.message = with_request_id(scrub(error.message), request_id)
    return shown


def worker_failure(status: int) -> str:
    return WORKER_FAILURE.get(status, "the model's worker failed on this request")
