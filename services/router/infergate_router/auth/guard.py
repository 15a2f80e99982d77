"""Authentication and limits, per request (on both request paths: the
request's :class:`~..request_scope.RequestScope` holds what they decide).

1. :func:`authenticate` (before every request but the probes): the bearer
   key's record, or anonymous where keys are not required; 401 in the
   protocol's shape (with ``WWW-Authenticate``) otherwise.
2. :func:`allows` and :func:`internal_request_id`: what the caller may
   reach. A model outside the key's scopes is answered exactly as an unknown
   one; request ids (the client's ``X-Request-Id`` included) are prefixed
   with the key's id, so a client can neither collide with nor address
   another key's streams.
3. :func:`admit` (when an inference request has found its model): one
   round trip to the limiter, or none when the process holds a block of
   the limit (:mod:`.reservations`); 429 with ``Retry-After`` when full.
4. :func:`finish` (after the request): the ``x-ratelimit-*`` headers, and
   the usage settled once the response has been sent (a stream settles when
   it closes, see :func:`stream_settler`).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Response

from infergate_common.api_keys import ApiKeyRecord, KeyLimits
from infergate_common.errors import AuthenticationFailed, InfergateError, ServiceUnavailable
from infergate_common.internal_auth import bearer

from .. import usage
from ..request_scope import RequestScope, current
from .limiter import Decision, RateLimiter, Scope, duration, retry_after_s

log = logging.getLogger(__name__)

NAMESPACE_SEPARATOR = "~"
WWW_AUTHENTICATE = 'Bearer realm="infergate"'


class RateLimitExceeded(InfergateError):
    status = 429
    type = "rate_limit_exceeded"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's record, or nobody in particular."""

    record: ApiKeyRecord | None = None

    @property
    def namespace(self) -> str:
        return self.record.id if self.record is not None else ""

    def allows(self, model: str) -> bool:
        return self.record is None or self.record.allows(model)


ANONYMOUS = Principal()


@dataclass
class Admission:
    limiter: RateLimiter
    scopes: list[Scope]
    member: str
    decision: Decision | None
    tokens: usage.TokenCount = field(default_factory=usage.TokenCount)
    # Settled without a round trip (no in-flight slot to free; see RateLimiter.settles_here).
    settles_here: bool = False
    settled: bool = False
    # Set when a stream took over settling.
    handed_off: bool = False

    def settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        self.limiter.settle(self.scopes, self.member, self.tokens.total)


def authenticate() -> None:
    scope = current()
    keys = scope.services.keys
    secret = bearer(scope.header("Authorization"))
    try:
        record = keys.lookup(secret) if secret else None
    except ServiceUnavailable:
        if keys.required:
            raise
        # Keys are optional here: without the key store the caller is anonymous.
        record = None
    if record is None and keys.required:
        raise AuthenticationFailed(
            "Missing or invalid API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key"
        )
    scope.principal = Principal(record) if record is not None else ANONYMOUS
    token = usage.current.set(scope.usage)
    scope.on_close.append(lambda: usage.current.reset(token))


def principal() -> Principal:
    return current().principal or ANONYMOUS


def allows(model: str) -> bool:
    return principal().allows(model)


def internal_request_id(public_id: str) -> str:
    """The id a request's worker call and stream are known by."""
    namespace = principal().namespace
    return f"{namespace}{NAMESPACE_SEPARATOR}{public_id}" if namespace else public_id


def owner() -> str:
    """What a stream's note records as its owner (the key id; '' anonymous)."""
    return principal().namespace


@functools.lru_cache(maxsize=4096)
def _key_scope(key_id: str, rpm: int | None, tpm: int | None, max_concurrent: int | None) -> Scope:
    """A key's scope, built once per key and set of limits (not per request)."""
    return Scope(f"key:{key_id}", KeyLimits(rpm=rpm, tpm=tpm, max_concurrent=max_concurrent))


def _scopes(request: RequestScope, model: str) -> list[Scope]:
    scopes = []
    record = (request.principal or ANONYMOUS).record
    if record is not None and (record.rpm or record.tpm or record.max_concurrent):
        scopes.append(_key_scope(record.id, record.rpm, record.tpm, record.max_concurrent))
    model_limits = request.services.settings.model_limits.get(model)
    if model_limits is not None and model_limits.any():
        scopes.append(Scope(f"model:{model}", model_limits))
    return scopes


def admit(model: str) -> None:
    """Count one request against the caller's and the model's limits."""
    request = current()
    if request.admission is not None:
        return
    scopes = _scopes(request, model)
    if not scopes:
        return
    limiter = request.services.limiter
    here = limiter.settles_here(scopes)
    # The request's member of the in-flight sets, where a scope limits concurrency.
    member = "" if here else f"{request.request_id}:{uuid.uuid4().hex[:12]}"
    decision = limiter.admit(scopes, member)
    admission = Admission(limiter, scopes, member, decision, request.usage, settles_here=here)
    request.admission = admission
    if decision is not None and not decision.allowed:
        admission.settled = True
        raise RateLimitExceeded(_refusal(scopes, decision), code="rate_limit_exceeded")


def _refusal(scopes: list[Scope], decision: Decision) -> str:
    wait = retry_after_s(decision.retry_after_ms)
    for scope, state in zip(scopes, decision.usage, strict=True):
        whose = "this API key" if scope.name.startswith("key:") else f"model {scope.name[6:]}"
        limits = scope.limits
        if limits.rpm and state.requests >= limits.rpm:
            what = f"requests per minute (limit {limits.rpm})"
        elif limits.tpm and state.tokens >= limits.tpm:
            what = f"tokens per minute (limit {limits.tpm})"
        elif limits.max_concurrent and state.inflight >= limits.max_concurrent:
            what = f"concurrent requests (limit {limits.max_concurrent})"
        else:
            continue
        return f"Rate limit reached for {what} on {whose}. Retry after {wait} s."
    return f"Rate limit reached. Retry after {wait} s."


def stream_settler() -> Callable[[], None]:
    """For a streamed response: what to call when the stream closes."""
    admission = current().admission
    if admission is None:
        return lambda: None
    admission.handed_off = True
    return admission.settle


def stream_tokens() -> usage.TokenCount:
    """The counter a stream adds its tokens to."""
    admission = current().admission
    return admission.tokens if admission is not None else usage.TokenCount()


def _rate_headers(response: Response, admission: Admission) -> None:
    decision = admission.decision
    if decision is None:
        return
    for state in decision.usage:
        limits = state.limits
        if not (limits.rpm or limits.tpm):
            continue
        # Names no other step sets: added, not looked for first.
        added: list[tuple[str, str]] = []
        if limits.rpm:
            added += (
                ("x-ratelimit-limit-requests", str(limits.rpm)),
                ("x-ratelimit-remaining-requests", str(max(0, limits.rpm - state.requests))),
                ("x-ratelimit-reset-requests", duration(state.requests_reset_ms)),
            )
        if limits.tpm:
            added += (
                ("x-ratelimit-limit-tokens", str(limits.tpm)),
                ("x-ratelimit-remaining-tokens", str(max(0, limits.tpm - state.tokens))),
                ("x-ratelimit-reset-tokens", duration(state.tokens_reset_ms)),
            )
        response.headers.extend(added)
        break
    if not decision.allowed:
        response.headers["Retry-After"] = str(retry_after_s(decision.retry_after_ms))
        response.headers["retry-after-ms"] = str(max(1, decision.retry_after_ms))


def finish(request: RequestScope, response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    admission = request.admission
    if admission is not None:
        _rate_headers(response, admission)
        if not admission.handed_off and not admission.settled:
            if admission.settles_here:
                # No round trip: the tokens are counted here and sent later.
                admission.settle()
            else:
                # After the body is sent: the client does not wait for Redis.
                response.call_on_close(admission.settle)
            admission.handed_off = True
    return response


def teardown(request: RequestScope) -> None:
    """A request that ended without a response to settle on (an error
    escaped): its admission is settled now."""
    admission = request.admission
    if admission is not None and not admission.handed_off:
        admission.settle()
