"""The router's settings: one pydantic model, read from ``INFERGATE_*``
environment variables by :func:`infergate_common.settings.load_settings`."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from infergate_common.api_keys import KeyLimits
from infergate_common.limits import GenerationLimits
from infergate_common.settings import load_settings
from infergate_common.streams import DEFAULT_PREFIX


class RouterSettings(GenerationLimits):
    """The limits of :class:`GenerationLimits` (``max_n``, ``max_stop_sequences``,
    ``max_stop_length``, ``max_logit_bias``) are the router's too; those below
    are the router's own (see ``docs/limits.md``)."""

    # May carry a password (redis://:<password>@host:6379/0); never logged.
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    registry_url: str = "http://127.0.0.1:8090"
    stream_prefix: str = DEFAULT_PREFIX
    # Silence on a token stream for this long means the worker died.
    heartbeat_deadline_s: float = Field(3.0, gt=0)
    # Longest a worker may take to answer a non-streaming call.
    request_timeout_s: float = Field(600.0, gt=0)
    connect_timeout_s: float = Field(3.0, gt=0)
    # While a process's only request in flight has its call to a worker out, and
    # that kind of call is usually answered within this long, the loop polls for
    # the answer instead of sleeping, for up to this long; and after a response,
    # for the next request, when this process's next request usually comes
    # sooner than that (lone_call_poll.py; 0: never).
    lone_call_poll_us: int = Field(1000, ge=0, le=10000)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Plain keys accepted as ``Authorization: Bearer <key>`` (every model, no
    # limits); setting any turns authentication on.
    api_keys: list[str] = Field(default_factory=list, repr=False)
    # A JSON file of hashed keys with scopes and limits (a mounted Secret), read
    # again when it changes; setting it turns authentication on.
    api_keys_file: str = ""
    # Also accept the keys created through the registry's admin API (in Redis).
    admin_keys: bool = True
    # Refuse requests without a valid key (true), or let them through as anonymous
    # (false); unset: required when keys are given at start (api_keys, api_keys_file).
    require_api_key: bool | None = None
    # The admin API's keys are refetched after this long even without a change message.
    key_cache_ttl_s: float = Field(5.0, gt=0)
    # Global caps per model name, JSON: {"llama": {"rpm": 600, "tpm": 100000, "max_concurrent": 32}}.
    model_limits: dict[str, KeyLimits] = Field(default_factory=dict)
    # Redis unreachable when a limit must be checked: "closed" answers 503, "open" admits.
    rate_limit_failure: Literal["closed", "open"] = "closed"
    # Sent to workers (Authorization: Bearer); the same token as the registry's and workers'.
    internal_token: str = Field("", repr=False)
    # The model list is refetched after this long even without a change message.
    registry_cache_ttl_s: float = Field(2.0, ge=0)
    # How long one XREAD of the multiplexed reader blocks.
    stream_block_ms: int = Field(2000, ge=10)
    # Name reported by GET /v2.
    server_name: str = "infergate"
    # When every replica of a model is at its capacity, how long a request
    # waits for room before a 429 (OpenAI) / 503 (KServe) with Retry-After.
    queue_wait_s: float = Field(1.0, ge=0)
    # How often each process reports its interactive requests in flight per
    # model to Redis, where batch workers read them to give way (0: never).
    load_report_interval_s: float = Field(0.5, ge=0)
    # On SIGTERM, how long open streams may run before they end with an
    # error event (and their generations are cancelled). gunicorn's
    # graceful timeout is this plus a few seconds.
    drain_s: float = Field(30.0, ge=0)

    # ---- request limits (a request past one is a 400 naming it)
    # Nesting of arrays and objects in a request body.
    max_json_depth: int = Field(64, ge=2, le=500)
    # Inputs of one /openai/v1/embeddings request (OpenAI's own limit).
    max_embedding_inputs: int = Field(2048, ge=1)
    # Prompts of one completions request, and generative v1 instances / v2 elements.
    max_prompts: int = Field(256, ge=1)
    # Instances of one v1 :predict, elements of one v2 /infer (all input tensors).
    max_v1_instances: int = Field(2048, ge=1)
    max_v2_elements: int = Field(2048, ge=1)
    # Completions ``logprobs`` and chat ``top_logprobs`` (OpenAI's 5 and 20 by default).
    max_logprobs: int = Field(5, ge=0, le=20)
    max_top_logprobs: int = Field(20, ge=0, le=20)

    @field_validator("model_limits", mode="before")
    @classmethod
    def _json_limits(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) and value.strip() else value or {}


def settings_from_env() -> RouterSettings:
    return load_settings(RouterSettings)
