"""The router's request limits, checked at the edge before anything reaches
a worker. The bounds are fields of :class:`~.settings.RouterSettings`; each
refusal is a 400 whose message names the limit and its setting (the body
size limit, a 413, is checked before parsing in ``app.py``). The workers
check what they can also be sent directly (``infergate_common.limits``).
"""

from __future__ import annotations

from typing import Any

from infergate_common.errors import InvalidRequest
from infergate_common.limits import LIMIT_CODE, check_count, check_sampling, load_json
from infergate_common.registry_api import ModelRecord
from infergate_common.worker_api import SamplingParams

from .services import services
from .settings import RouterSettings


def settings() -> RouterSettings:
    return services().settings


def parse_json(raw: bytes) -> Any:
    """The body as JSON, its nesting bounded (``max_json_depth``)."""
    return load_json(raw, settings().max_json_depth)


def check_prompts(count: int, param: str = "prompt") -> None:
    check_count("too many prompts in one request", count, settings().max_prompts, "max_prompts", param)


def check_embedding_inputs(count: int) -> None:
    limit = settings().max_embedding_inputs
    check_count("too many inputs in one request", count, limit, "max_embedding_inputs", "input")


def check_v1_instances(count: int, where: str) -> None:
    limit = settings().max_v1_instances
    check_count(f"too many {where} in one request", count, limit, "max_v1_instances", where)


def check_v2_elements(count: int) -> None:
    limit = settings().max_v2_elements
    check_count("too many tensor elements in one request", count, limit, "max_v2_elements", "inputs")


def logit_bias_ids(raw: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's ``{"<token id>": bias}`` with integer keys; a key that is not
    a token id is a 400 (the ranges are checked with the other limits)."""
    if not raw:
        return None
    bias: dict[int, float] = {}
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequest(
                f"'logit_bias': key {key!r} is not a token id (an integer)", param="logit_bias"
            ) from None
        bias[token] = float(value)
    return bias


def check_logprobs(logprobs: int | None, param: str) -> None:
    """``logprobs`` (completions) or ``top_logprobs`` (chat) against its setting."""
    if logprobs is None:
        return
    setting = "max_logprobs" if param == "logprobs" else "max_top_logprobs"
    limit = getattr(settings(), setting)
    if logprobs > limit:
        raise InvalidRequest(
            f"'{param}' must be at most {limit} (setting {setting}, environment INFERGATE_{setting.upper()})",
            param=param,
            code=LIMIT_CODE,
        )


def check_generation(params: SamplingParams, model: ModelRecord) -> None:
    """The sampling limits, and ``max_tokens`` against the model's context
    (the worker, which counts the prompt's tokens, checks prompt plus
    ``max_tokens``)."""
    check_sampling(params, settings())
    context = model.max_model_len
    if context is not None and params.max_tokens is not None and params.max_tokens > context:
        raise InvalidRequest(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{params.max_tokens} tokens for the completion alone. Please reduce max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
