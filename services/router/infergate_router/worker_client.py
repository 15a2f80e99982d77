"""Calls to the internal worker API over one pooled ``requests`` session
per process. Worker errors come back as the exception the worker raised
(:func:`infergate_common.errors.from_payload`); transport failures become
502 (unreachable), 503 (no replica left) or 504 (timeout)."""

from __future__ import annotations

import logging
import threading
from typing import TypeVar

import requests
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter

from infergate_common.errors import GatewayTimeout, UpstreamError, from_payload
from infergate_common.internal_auth import auth_header
from infergate_common.worker_api import (
    DetokenizeRequest,
    DetokenizeResponse,
    EncodeRequest,
    EncodeResponse,
    GenerateRequest,
    GenerateResponse,
    StreamAccepted,
)

from . import usage
from .public_errors import worker_failure

log = logging.getLogger(__name__)

ResponseT = TypeVar("ResponseT", bound=BaseModel)


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
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.session = requests.Session()
        # Workers require the internal credential on every route the router calls.
        self.session.headers.update(auth_header(internal_token))
        # Internal calls: no proxy variables or netrc to look up per request.
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=64, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _post(self, url: str, body: BaseModel, timeout_s: float | None = None) -> requests.Response:
        try:
            return self.session.post(
                url,
                data=body.model_dump_json(exclude_none=True),
                headers={"Content-Type": "application/json"},
                timeout=(self.connect_timeout_s, timeout_s or self.request_timeout_s),
            )
        except requests.ConnectTimeout as exc:
            log.warning("worker %s did not accept the connection", url)
            raise WorkerUnreachable("the worker did not accept the connection") from exc
        except requests.Timeout as exc:
            raise GatewayTimeout(
                f"worker did not answer within {timeout_s or self.request_timeout_s}s"
            ) from exc
        except requests.ConnectionError as exc:
            log.warning("connection to worker %s failed: %s", url, exc)
            if _never_sent(exc):
                raise WorkerUnreachable("the worker is unreachable") from exc
            raise UpstreamError(f"connection to the worker failed: {type(exc).__name__}") from exc

    @staticmethod
    def _parse(response: requests.Response, model: type[ResponseT], expected: int = 200) -> ResponseT:
        if response.status_code != expected:
            try:
                body = response.json()
            except ValueError:
                body = None
            error = from_payload(response.status_code, body)
            if error.status >= 500 and error.status != 501:
                # Another process's failure: its text goes to the log, not to the client.
                log.warning("worker %s answered %s: %s", response.url, response.status_code, error.message)
                error.message = worker_failure(error.status)
            elif error.status in (401, 403):
                log.error("worker refused the router's internal credential: %s", error.message)
                error = UpstreamError(worker_failure(502))
            raise error
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise UpstreamError(f"worker answered an unexpected body: {exc.errors()[0]['msg']}") from exc

    def generate(self, replica: str, request: GenerateRequest) -> GenerateResponse:
        response = self._parse(self._post(f"{replica}/generate", request), GenerateResponse)
        usage.record(response.usage.prompt_tokens, response.usage.completion_tokens)
        return response

    def start_stream(self, replica: str, request: GenerateRequest) -> StreamAccepted:
        response = self._post(f"{replica}/generate", request, timeout_s=max(self.connect_timeout_s, 30.0))
        return self._parse(response, StreamAccepted, expected=202)

    def encode(self, replica: str, request: EncodeRequest) -> EncodeResponse:
        response = self._parse(self._post(f"{replica}/encode", request), EncodeResponse)
        usage.record(response.usage.prompt_tokens, 0)
        return response

    def detokenize(self, replica: str, request: DetokenizeRequest) -> DetokenizeResponse:
        return self._parse(self._post(f"{replica}/detokenize", request), DetokenizeResponse)

    def cancel(self, replica: str, request_id: str) -> None:
        """Best effort: a worker that is gone has nothing left to cancel."""
        try:
            self.session.post(f"{replica}/cancel/{request_id}", timeout=(self.connect_timeout_s, 5.0))
        except requests.RequestException as exc:
            log.info("cancel of %s on %s failed: %s", request_id, replica, exc)

    def cancel_later(self, replica: str, request_id: str) -> None:
        threading.Thread(target=self.cancel, args=(replica, request_id), daemon=True).start()

    def close(self) -> None:
        self.session.close()


def _never_sent(exc: requests.ConnectionError) -> bool:
    """Connection refused or name not resolved: the worker never saw the request."""
    text = repr(exc)
    return any(
        marker in text
        for marker in ("Connection refused", "NewConnectionError", "Name or service not known", "Errno 111")
    )
