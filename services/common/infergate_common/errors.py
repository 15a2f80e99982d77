"""The one exception hierarchy of infergate.

Every error that reaches a client is an ``InfergateError``: it carries the
HTTP status and an OpenAI-style ``type``. Each public protocol renders it in
its own shape (see the router's protocol modules); the internal worker API
renders it with :func:`to_payload` and the router turns it back into an
exception with :func:`from_payload`, so a worker's 400 stays a 400.
"""

from __future__ import annotations

from typing import Any


class InfergateError(Exception):
    """Base of all errors that map to an HTTP status."""

    status: int = 500
    type: str = "internal_error"
    # Seconds a client should wait before retrying (sent as ``Retry-After``).
    retry_after_s: float | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status


class InvalidRequest(InfergateError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(InfergateError):
    status = 401
    type = "authentication_error"


class PermissionDenied(InfergateError):
    status = 403
    type = "permission_error"


class NotFound(InfergateError):
    status = 404
    type = "not_found_error"


class ModelNotFound(NotFound):
    """Unknown model name: KServe's message, OpenAI's ``model_not_found`` code."""

    def __init__(self, name: str, *, hint: str = "") -> None:
        message = f"Model with name {name} does not exist."
        if hint:
            message = f"{message} {hint}"
        super().__init__(message, param="model", code="model_not_found")
        self.name = name


class PayloadTooLarge(InfergateError):
    status = 413
    type = "invalid_request_error"


class NotImplementedForModel(InfergateError):
    status = 501
    type = "not_implemented_error"


class UpstreamError(InfergateError):
    status = 502
    type = "upstream_error"


class ServiceUnavailable(InfergateError):
    status = 503
    type = "service_unavailable_error"


class Overloaded(ServiceUnavailable):
    """No capacity left for another request right now (every slot of a
    replica, or of every replica of a model, is taken; or the replica is
    draining). Clients should retry after ``retry_after_s``: OpenAI routes
    answer 429, KServe routes 503, both with ``Retry-After``."""

    type = "overloaded_error"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str = "overloaded") -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class ClientClosedRequest(InfergateError):
    """The client went away before its request reached a worker: nothing
    was started for it (499, nginx's "client closed request")."""

    status = 499
    type = "client_closed_request"


class GatewayTimeout(InfergateError):
    status = 504
    type = "timeout_error"


class StartupError(InfergateError):
    """A service cannot start with the configuration it was given."""

    status = 500
    type = "startup_error"


_BY_STATUS: dict[int, type[InfergateError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    413: PayloadTooLarge,
    501: NotImplementedForModel,
    502: UpstreamError,
    503: ServiceUnavailable,
    504: GatewayTimeout,
}


def to_payload(error: InfergateError) -> dict[str, Any]:
    """The JSON body of an error on internal APIs (worker, registry)."""
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
            "status": error.status,
        }
    }


def from_payload(status: int, body: Any) -> InfergateError:
    """Rebuild the exception a worker or the registry answered with."""
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        message = str(detail.get("message") or "upstream error")
        param, code = detail.get("param"), detail.get("code")
    elif isinstance(detail, str):
        message, param, code = detail, None, None
    else:
        message, param, code = f"upstream answered HTTP {status}", None, None
    if status == 503 and isinstance(detail, dict) and detail.get("type") == Overloaded.type:
        return Overloaded(message, code=str(code or "overloaded"))
    cls = _BY_STATUS.get(status, UpstreamError if status >= 500 else InvalidRequest)
    return cls(message, param=param, code=code, status=status)
