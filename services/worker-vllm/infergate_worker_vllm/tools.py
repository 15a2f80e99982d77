"""Tool calls and structured outputs through vLLM's own machinery.

* The constraint: vLLM's ``get_json_schema_from_tools`` for ``tool_choice``
  "required" or named, ``response_format`` as ``StructuredOutputsParams``
  (compact JSON: a model cannot stall in whitespace), checked by vLLM's own
  validation before the request is admitted (an uncompilable schema is a 400
  before a stream opens).
* "auto": vLLM's tool parser (``--tool_call_parser``, or the model family's)
  reads the output, behind the same :class:`CallExtractor` interface that
  worker-hf's parsers have, so the worker API's shapes are the same.
* Forced calls are read by the shared extractors (:mod:`infergate_common.tool_calls`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from infergate_common.errors import InvalidRequest, StartupError
from infergate_common.tool_calls import (
    DEFAULT_PARSER,
    FAMILY_PARSERS,
    CallExtractor,
    Pieces,
    forced_extractor,
)
from infergate_common.worker_api import GenerateRequest, ToolCallDelta


def parser_name(model_type: str | None, chosen: str | None) -> str:
    """The vLLM tool parser for "auto": the flag, else the family's format."""
    from vllm.tool_parsers import ToolParserManager

    name = chosen or FAMILY_PARSERS.get(model_type or "", DEFAULT_PARSER)
    try:
        ToolParserManager.get_tool_parser(name)
    except KeyError as exc:
        raise StartupError(f"unknown --tool_call_parser {name!r}: {exc}") from exc
    return name


def vllm_chat_request(request: GenerateRequest) -> Any:
    """vLLM's own ``ChatCompletionRequest`` for the tool parsers and the schema."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    body: dict[str, Any] = {
        "messages": [message.model_dump(exclude_none=True) for message in request.messages or []],
        "tools": [tool.model_dump(exclude_none=True) for tool in request.tools] if request.tools else None,
        "tool_choice": _dump(request.effective_tool_choice),
        "parallel_tool_calls": request.parallel_tool_calls,
    }
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValueError as exc:
        raise InvalidRequest(f"tools: {exc}", param="tools") from exc


def _dump(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


def structured_outputs(request: GenerateRequest, chat_request: Any | None) -> Any | None:
    """vLLM ``StructuredOutputsParams`` for a forced call or ``response_format``."""
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.tool_parsers.utils import get_json_schema_from_tools

    if chat_request is not None and chat_request.tools:
        schema = get_json_schema_from_tools(
            tool_choice=chat_request.tool_choice,
            tools=chat_request.tools,
            parallel_tool_calls=chat_request.parallel_tool_calls,
        )
        if schema is not None:
            return StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    response_format = request.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutputsParams(json_object=True, disable_any_whitespace=True)
    assert response_format.json_schema is not None
    schema = response_format.json_schema.schema_ or {"type": "object"}
    return StructuredOutputsParams(json=schema, disable_any_whitespace=True)


def check_structured_outputs(llm: Any, sampling: Any, param: str) -> None:
    """vLLM's own validation of the constraint, run before admission."""
    from vllm.exceptions import VLLMValidationError

    if getattr(sampling, "structured_outputs", None) is None:
        return
    config = llm.vllm_config
    try:
        copy.deepcopy(sampling).verify(
            llm.model_config,
            config.speculative_config,
            config.structured_outputs_config,
            llm.input_processor.tokenizer,
        )
    except (ValueError, VLLMValidationError) as exc:
        raise InvalidRequest(
            f"the JSON schema cannot be used for constrained decoding: {exc}", param=param
        ) from exc


class VllmParserExtractor(CallExtractor):
    """A vLLM ``ToolParser`` read through the :class:`CallExtractor` interface."""

    def __init__(self, parser: Any, chat_request: Any) -> None:
        super().__init__()
        self.parser = parser
        self.request = chat_request
        self.text = ""
        self.token_ids: list[int] = []
        self.next_ids: list[int] = []

    def tokens(self, token_ids: list[int]) -> None:
        """The token ids of the next :meth:`feed` (some parsers look at them)."""
        self.next_ids = list(token_ids)

    def _feed(self, text: str) -> Pieces:
        previous, current = self.text, self.text + text
        previous_ids, delta_ids = self.token_ids, self.next_ids
        self.text, self.token_ids, self.next_ids = current, previous_ids + delta_ids, []
        if not text and not delta_ids:
            return "", []
        message = self.parser.extract_tool_calls_streaming(
            previous, current, text, previous_ids, self.token_ids, delta_ids, self.request
        )
        if message is None:
            return "", []
        deltas = []
        for call in message.tool_calls or []:
            function = call.function
            deltas.append(
                ToolCallDelta(
                    index=call.index,
                    id=call.id,
                    name=function.name if function is not None else None,
                    arguments=(function.arguments or "") if function is not None else "",
                )
            )
        return message.content or "", deltas

    def _flush(self) -> Pieces:
        # Arguments the streaming parser parsed but did not send yet.
        remaining = self.parser.get_remaining_unstreamed_args()
        if remaining and self._calls:
            return "", [ToolCallDelta(index=len(self._calls) - 1, arguments=remaining)]
        return "", []


def whole_text_calls(parser: Any, chat_request: Any, text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """vLLM's non-streaming extraction: content and (id, name, arguments)."""
    info = parser.extract_tool_calls(text, chat_request)
    if not info.tools_called:
        return text, []
    calls = [(call.id, call.function.name, call.function.arguments) for call in info.tool_calls]
    return info.content or "", calls


def extractor_factory(
    request: GenerateRequest, parser_cls: Any, tokenizer: Any, chat_request: Any | None
) -> Callable[[], CallExtractor] | None:
    """How each choice's output is read (None: plain text)."""
    if request.effective_tool_choice == "none" or chat_request is None:
        return None
    if forced_extractor(request) is not None:
        return lambda: forced_extractor(request)  # type: ignore[return-value]
    return lambda: VllmParserExtractor(parser_cls(tokenizer, chat_request.tools), chat_request)
