"""The router's settings: one pydantic model, read from ``INFERGATE_*``
environment variables by :func:`infergate_common.settings.load_settings`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from infergate_common.settings import load_settings
from infergate_common.streams import DEFAULT_PREFIX


class RouterSettings(BaseModel):
    redis_url: str = "redis://127.0.0.1:6379/0"
    registry_url: str = "http://127.0.0.1:8090"
    stream_prefix: str = DEFAULT_PREFIX
    # Silence on a token stream for this long means the worker died.
    heartbeat_deadline_s: float = Field(3.0, gt=0)
    # Longest a worker may take to answer a non-streaming call.
    request_timeout_s: float = Field(600.0, gt=0)
    connect_timeout_s: float = Field(3.0, gt=0)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Empty: no authentication. Otherwise ``Authorization: Bearer <key>``.
    api_keys: list[str] = Field(default_factory=list)
    # The model list is refetched after this long even without a change message.
    registry_cache_ttl_s: float = Field(2.0, ge=0)
    # How long one XREAD of the multiplexed reader blocks.
    stream_block_ms: int = Field(2000, ge=10)
    # Name reported by GET /v2.
    server_name: str = "infergate"
    # When every replica of a model is at its capacity, how long a request
    # waits for room before a 429 (OpenAI) / 503 (KServe) with Retry-After.
    queue_wait_s: float = Field(1.0, ge=0)
    # On SIGTERM, how long open streams may run before they end with an
    # error event (and their generations are cancelled). gunicorn's
    # graceful timeout is this plus a few seconds.
    drain_s: float = Field(30.0, ge=0)


def settings_from_env() -> RouterSettings:
    return load_settings(RouterSettings)
