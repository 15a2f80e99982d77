"""Bounds on what one request may ask of a worker, shared by the router
(which refuses at the edge, in each protocol's shape) and the workers
(which the batch worker and other internal callers reach directly).

Every bound is a settings field, read from ``INFERGATE_<FIELD>`` like any
other setting (workers also take it as ``--<field>``); a refusal is an
:class:`~infergate_common.errors.InvalidRequest` (400) whose message names
the limit and the setting that raises it, with ``code="limit_exceeded"``.
The user-facing table is ``docs/limits.md``.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from pydantic import BaseModel, Field

from .errors import InvalidRequest
from .worker_api import EncodeRequest, SamplingParams

LIMIT_CODE = "limit_exceeded"

# The seed range of vLLM's engine and of torch's generators: a signed 64-bit integer.
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1
# OpenAI's range of a logit_bias value.
LOGIT_BIAS_MAX = 100.0


class GenerationLimits(BaseModel):
    """What one generation may ask for (router and workers)."""

    # Choices per prompt (OpenAI's own ceiling is 128).
    max_n: int = Field(128, ge=1, le=128)
    # Stop sequences per request, and characters per stop sequence: each one
    # is matched against the tail of every choice after every token.
    max_stop_sequences: int = Field(16, ge=0)
    max_stop_length: int = Field(256, ge=1)
    # Entries of logit_bias (OpenAI accepts up to 300).
    max_logit_bias: int = Field(300, ge=0)


class WorkerLimits(GenerationLimits):
    """What one call of the internal worker API may carry."""

    # Inputs of one /encode call (embeddings, v1 instances, v2 elements).
    max_encode_inputs: int = Field(2048, ge=1)


def refuse(what: str, count: int, limit: int, setting: str, param: str | None = None) -> InvalidRequest:
    """The 400 for ``count`` things where ``limit`` are allowed."""
    return InvalidRequest(
        f"{what}: {count} given, the limit is {limit} "
        f"(setting {setting}, environment INFERGATE_{setting.upper()})",
        param=param,
        code=LIMIT_CODE,
    )


def check_count(what: str, count: int, limit: int, setting: str, param: str | None = None) -> None:
    if count > limit:
        raise refuse(what, count, limit, setting, param)


def check_seed(seed: int | None, param: str = "seed") -> None:
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
        raise InvalidRequest(
            f"'{param}' must be a 64-bit signed integer, between {SEED_MIN} and {SEED_MAX}",
            param=param,
            code=LIMIT_CODE,
        )


def check_logit_bias_values(
    bias: dict[int, float], limits: GenerationLimits, param: str = "logit_bias"
) -> None:
    check_count("too many logit_bias entries", len(bias), limits.max_logit_bias, "max_logit_bias", param)
    for token, value in bias.items():
        if token < 0:
            raise InvalidRequest(f"'{param}': token id {token} is negative", param=param)
        if not -LOGIT_BIAS_MAX <= value <= LOGIT_BIAS_MAX:
            raise InvalidRequest(
                f"'{param}': the bias of token {token} is {value}; biases must be between "
                f"{-LOGIT_BIAS_MAX:g} and {LOGIT_BIAS_MAX:g}",
                param=param,
            )


def check_logit_bias_vocabulary(
    bias: dict[int, float] | None, vocab_size: int, param: str = "logit_bias"
) -> None:
    """Token ids the model cannot produce are a 400 (workers know the vocabulary)."""
    if not bias:
        return
    bad = sorted(token for token in bias if token < 0 or token >= vocab_size)
    if bad:
        raise InvalidRequest(
            f"'{param}': token ids out of the vocabulary 0..{vocab_size - 1}: {bad[:5]}", param=param
        )


def check_sampling(params: SamplingParams, limits: GenerationLimits) -> None:
    """The bounds of :class:`GenerationLimits` on one generation's parameters."""
    check_count("too many choices ('n')", params.n, limits.max_n, "max_n", "n")
    check_count(
        "too many stop sequences", len(params.stop), limits.max_stop_sequences, "max_stop_sequences", "stop"
    )
    longest = max((len(stop) for stop in params.stop), default=0)
    check_count(
        "stop sequence too long (characters)", longest, limits.max_stop_length, "max_stop_length", "stop"
    )
    check_seed(params.seed)
    if params.logit_bias:
        check_logit_bias_values(params.logit_bias, limits)


def check_encode(request: EncodeRequest, limits: WorkerLimits) -> None:
    check_count(
        "too many inputs in one request",
        len(request.inputs),
        limits.max_encode_inputs,
        "max_encode_inputs",
        "inputs",
    )


# ------------------------------------------------------------ JSON nesting


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply ``value`` (parsed JSON) nests arrays and objects, level
    by level without recursion; stops counting once past ``limit``."""
    depth = 0
    level = [value] if isinstance(value, (list, dict)) else []
    while level:
        depth += 1
        if depth > limit:
            break
        below: list[Any] = []
        for node in level:
            children = node.values() if isinstance(node, dict) else node
            below.extend(child for child in children if isinstance(child, (list, dict)))
        level = below
    return depth


def too_deep(limit: int, setting: str = "max_json_depth") -> InvalidRequest:
    return InvalidRequest(
        f"the request body nests arrays and objects more than {limit} levels deep "
        f"(setting {setting}, environment INFERGATE_{setting.upper()})",
        code=LIMIT_CODE,
    )


# A JSON string, escapes included (the unrolled form, linear in its length).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Opening brackets as +1 and closing ones as -1 (signed bytes).
_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")


def scanned_depth(raw: bytes) -> int:
    """The nesting depth of a valid JSON text from its bytes: strings
    removed, brackets as +1/-1, the deepest running sum; in C all the way
    (its cost grows with the number of strings, the walk's with the number
    of arrays and objects)."""
    steps = _STRING.sub(b"", raw).translate(_STEPS, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def load_json(raw: bytes, limit: int, setting: str = "max_json_depth") -> Any:
    """``json.loads`` with the nesting bounded: a body deeper than the
    parser's recursion allows, or deeper than ``limit``, is a 400, never a
    RecursionError. A body with few brackets (most) cannot nest deeper than
    it has brackets and is not checked further; otherwise the cheaper of
    two exact measures runs."""
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise too_deep(limit, setting) from exc
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > limit:
        depth = scanned_depth(raw) if raw.count(b'"') <= 2 * containers else nesting_depth(value, limit)
        if depth > limit:
            raise too_deep(limit, setting)
    return value
