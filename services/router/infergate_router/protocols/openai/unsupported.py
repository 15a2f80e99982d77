"""OpenAI parameters infergate does not honour, per route: a request that
asks for one is a 400 naming it, never answered as if it had not asked.

Each row names a field and the values that ask for nothing (so clients
that always send the default, ``"best_of": 1`` or ``"store": false``, keep
working). When a route learns a parameter, its row goes. Fields absent from
these tables and from the request models are accepted and have no effect on
the answer by design (``user``, ``metadata``, ``service_tier``,
``prompt_cache_key``, ``safety_identifier``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from infergate_common.errors import InvalidRequest


def _null(value: Any) -> bool:
    return value is None


def _null_or_false(value: Any) -> bool:
    return value is None or value is False


def _null_or(*accepted: Any) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return value is None or any(value == item and type(value) is type(item) for item in accepted)

    return check


@dataclass(frozen=True)
class Unsupported:
    name: str
    # Values that ask for nothing; any other value is refused.
    harmless: Callable[[Any], bool] = _null
    why: str = "is not supported by this server"


# OpenAI's chat parameters and vLLM's extensions that change the answer.
CHAT: tuple[Unsupported, ...] = (
    Unsupported("audio", why="is not supported: the models served here produce text only"),
    Unsupported(
        "modalities", _null_or(["text"]), "is not supported: the models served here produce text only"
    ),
    Unsupported("prediction", why="(predicted outputs) is not supported"),
    Unsupported("reasoning_effort"),
    Unsupported("verbosity"),
    Unsupported("web_search_options", why="is not supported: there is no web search"),
    Unsupported("functions", why="(the deprecated form of tools) is not supported"),
    Unsupported("function_call", why="(the deprecated form of tool_choice) is not supported"),
    Unsupported("store", _null_or_false, "is not supported: completions are not stored"),
    Unsupported("moderation"),
    Unsupported("min_p"),
    Unsupported("min_tokens", _null_or(0)),
    Unsupported("repetition_penalty", _null_or(1, 1.0)),
    Unsupported("length_penalty", _null_or(1, 1.0)),
    Unsupported("use_beam_search", _null_or_false),
    Unsupported("best_of", _null_or(1)),
    Unsupported("guided_json"),
    Unsupported("guided_regex"),
    Unsupported("guided_choice"),
    Unsupported("guided_grammar"),
    Unsupported("structured_outputs"),
    Unsupported("stop_token_ids", _null_or([])),
    Unsupported("allowed_token_ids"),
    Unsupported("bad_words", _null_or([])),
    Unsupported("prompt_logprobs"),
)

COMPLETIONS: tuple[Unsupported, ...] = (
    Unsupported("best_of", _null_or(1), "greater than 1 is not supported"),
    Unsupported("suffix", _null_or(""), "(insertion) is not supported"),
    Unsupported("min_p"),
    Unsupported("min_tokens", _null_or(0)),
    Unsupported("repetition_penalty", _null_or(1, 1.0)),
    Unsupported("length_penalty", _null_or(1, 1.0)),
    Unsupported("use_beam_search", _null_or_false),
    Unsupported("guided_json"),
    Unsupported("guided_regex"),
    Unsupported("guided_choice"),
    Unsupported("guided_grammar"),
    Unsupported("structured_outputs"),
    Unsupported("stop_token_ids", _null_or([])),
    Unsupported("allowed_token_ids"),
    Unsupported("bad_words", _null_or([])),
    Unsupported("prompt_logprobs"),
)

EMBEDDINGS: tuple[Unsupported, ...] = (
    Unsupported("truncate_prompt_tokens"),
    Unsupported("normalize", _null_or(True), "false is not supported: embeddings are L2-normalised"),
)


def refuse_unsupported(body: BaseModel, table: tuple[Unsupported, ...]) -> None:
    """A 400 naming the first field of ``table`` that ``body`` asks for."""
    given: Mapping[str, Any] = body.model_extra or {}
    for row in table:
        if row.name in given and not row.harmless(given[row.name]):
            raise InvalidRequest(
                f"'{row.name}' {row.why}; remove it from the request",
                param=row.name,
                code="unsupported_parameter",
            )
