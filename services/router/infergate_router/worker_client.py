"""Calls to the internal worker API over keep-alive connections, one set
per replica (:mod:`.worker_connection`: on the router's hot path a call
costs less CPU there than with ``geventhttpclient``, ``urllib3`` or
``requests``; ``python -m bench.http_clients`` compares them).

Worker errors come back as the exception the worker raised
(:func:`infergate_common.errors.from_payload`); transport failures become
502 (unreachable), 503 (no replica left) or 504 (timeout). Whether the
worker never saw the request, so that another replica may be tried, is
decided by the exception types in the cause chain, never by their text.
POSTs are never retried by the transport: a generation must not start twice.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import orjson
from gevent import monkey
from pydantic import BaseModel, ValidationError

from infergate_common.errors import GatewayTimeout, Overloaded, UpstreamError, from_payload
from infergate_common.internal_auth import auth_header
from infergate_common.worker_api import (
    DetokenizeRequest,
    DetokenizeResponse,
    EncodeRequest,
    EncodeResponse,
    GenerateRequest,
    GenerateResponse,
    StreamAccepted,
    TabularPredictRequest,
    TabularPredictResponse,
)

from . import lone_call_poll, usage
from .lone_call_poll import LoneCallPoll
from .public_errors import worker_failure
from .worker_connection import ConnectFailed, WorkerConnections

log = logging.getLogger(__name__)

ResponseT = TypeVar("ResponseT", bound=BaseModel)

JSON_HEADERS = {"Content-Type": "application/json"}
CANCEL_TIMEOUT_S = 5.0
STREAM_START_TIMEOUT_S = 30.0


# Exceptions that mean the connection was never made: nothing was sent.
NEVER_SENT: tuple[type[BaseException], ...] = (ConnectFailed, ConnectionRefusedError, socket.gaierror)


class WorkerUnreachable(UpstreamError):
    """The connection to the replica failed before the request was sent, so
    another replica may be tried."""


class WorkerClient:
    def __init__(
        self,
        connect_timeout_s: float,
        request_timeout_s: float,
        pool_size: int = 1000,
        internal_token: str = "",
        lone_call_poll_us: int = 0,
        in_flight: Callable[[], int] = lambda: 1,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        # Workers require the internal credential on every route the router calls.
        self.headers = {**JSON_HEADERS, **auth_header(internal_token)}
        self.request_timeout_s = request_timeout_s
        self.stream_timeout_s = max(connect_timeout_s, STREAM_START_TIMEOUT_S)
        self.pool_size = pool_size
        # gevent's pools belong to one hub: under gunicorn's gevent worker
        # (threads patched into greenlets) one set serves the process;
        # with real threads (tests, tools), each thread has its own.
        self._shared = monkey.is_module_patched("threading")
        self._local = threading.local()
        self._pools: dict[str, WorkerConnections] = {}
        self._lock = threading.Lock()
        # Only a gevent process has one loop to keep polling.
        self._poll = (
            LoneCallPoll(lone_call_poll_us, in_flight) if self._shared and lone_call_poll_us else None
        )
        if self._poll is not None:
            lone_call_poll.serve_process(self._poll)

    def _connections(self, replica: str) -> WorkerConnections:
        pools = self._pools if self._shared else self._thread_pools()
        pool = pools.get(replica)
        if pool is None:
            with self._lock:
                pool = pools.get(replica)
                if pool is None:
                    parts = urlsplit(replica)
                    pool = pools[replica] = WorkerConnections(
                        parts.hostname or "127.0.0.1",
                        parts.port or 80,
                        self.connect_timeout_s,
                        self.pool_size,
                        self.headers,
                    )
        return pool

    def _thread_pools(self) -> dict[str, WorkerConnections]:
        pools: dict[str, WorkerConnections] | None = getattr(self._local, "pools", None)
        if pools is None:
            pools = self._local.pools = {}
        return pools

    def _post(
        self, replica: str, path: str, body: bytes, timeout_s: float, kind: str = ""
    ) -> tuple[int, bytes]:
        poll = self._poll
        if poll is not None:
            key = (replica, kind or path)
            began = poll.begin(key)
        try:
            return self._connections(replica).post(path, body, timeout_s)
        except OSError as exc:
            log.warning("call to worker %s%s failed: %r", replica, path, exc)
            if never_sent(exc):
                raise WorkerUnreachable("the worker is unreachable") from exc
            if isinstance(exc, TimeoutError):
                raise GatewayTimeout(f"worker did not answer within {timeout_s:g}s") from exc
            raise UpstreamError(f"connection to the worker failed: {type(exc).__name__}") from exc
        finally:
            if poll is not None:
                poll.end(key, began)

    @staticmethod
    def _parse(answer: tuple[int, bytes], model: type[ResponseT], expected: int = 200) -> ResponseT:
        status, data = answer
        if status != expected:
            try:
                body = orjson.loads(data)
            except orjson.JSONDecodeError:
                body = None
            error = from_payload(status, body)
            if error.status >= 500 and error.status != 501 and not isinstance(error, Overloaded):
                # Another process's failure: its text goes to the log, not to the client.
                log.warning("worker answered %s: %s", status, error.message)
                error.message = worker_failure(error.status)
            elif error.status in (401, 403):
                log.error("worker refused the router's internal credential: %s", error.message)
                error = UpstreamError(worker_failure(502))
            raise error
        try:
            return model.model_validate_json(data)
        except ValidationError as exc:
            raise UpstreamError(f"worker answered an unexpected body: {exc.errors()[0]['msg']}") from exc

    @staticmethod
    def _body(request: BaseModel) -> bytes:
        # pydantic's serializer (Rust), straight to bytes.
        return request.__pydantic_serializer__.to_json(request, exclude_none=True)

    def generate(self, replica: str, request: GenerateRequest) -> GenerateResponse:
        answer = self._post(replica, "/generate", self._body(request), self.request_timeout_s)
        response = self._parse(answer, GenerateResponse)
        usage.record(response.usage.prompt_tokens, response.usage.completion_tokens)
        return response

    def start_stream(self, replica: str, request: GenerateRequest) -> StreamAccepted:
        answer = self._post(replica, "/generate", self._body(request), self.stream_timeout_s, "stream")
        return self._parse(answer, StreamAccepted, expected=202)

    def encode(self, replica: str, request: EncodeRequest) -> EncodeResponse:
        answer = self._post(replica, "/encode", self._body(request), self.request_timeout_s)
        response = self._parse(answer, EncodeResponse)
        usage.record(response.usage.prompt_tokens, 0)
        return response

    def predict(self, replica: str, request: TabularPredictRequest) -> TabularPredictResponse:
        answer = self._post(replica, "/predict", self._body(request), self.request_timeout_s)
        return self._parse(answer, TabularPredictResponse)

    def detokenize(self, replica: str, request: DetokenizeRequest) -> DetokenizeResponse:
        answer = self._post(replica, "/detokenize", self._body(request), self.request_timeout_s)
        return self._parse(answer, DetokenizeResponse)

    def cancel(self, replica: str, request_id: str) -> None:
        """Best effort: a worker that is gone has nothing left to cancel."""
        try:
            self._post(replica, f"/cancel/{request_id}", b"", CANCEL_TIMEOUT_S, "cancel")
        except UpstreamError as exc:
            log.info("cancel of %s on %s failed: %s", request_id, replica, exc.message)

    def cancel_later(self, replica: str, request_id: str) -> None:
        threading.Thread(target=self.cancel, args=(replica, request_id), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()


def never_sent(exc: BaseException) -> bool:
    """Connection refused, not resolved or not opened anywhere in the cause
    chain: the worker never saw the request."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, NEVER_SENT):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
