"""worker-vllm's tool-call reading: vLLM's own parsers behind the shared
extractor interface, and the constraint built by vLLM's own schema helper
(no engine needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infergate_common.tool_calls import extract_all
from infergate_common.worker_api import GenerateRequest
from infergate_worker_vllm.tools import (
    VllmParserExtractor,
    extractor_factory,
    parser_name,
    structured_outputs,
    vllm_chat_request,
    whole_text_calls,
)

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HERMES_TEXT = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


def _request(**extra: Any) -> GenerateRequest:
    body = {
        "request_id": "r",
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [TOOL],
        **extra,
    }
    return GenerateRequest.model_validate(body)


def _parser_cls(name: str) -> Any:
    from vllm.tool_parsers import ToolParserManager

    return ToolParserManager.get_tool_parser(name)


def test_hermes_streamed_pieces_equal_the_whole_text(tiny_llama_tokenizer: Any) -> None:
    request = _request()
    chat_request = vllm_chat_request(request)
    factory = extractor_factory(request, _parser_cls("hermes"), tiny_llama_tokenizer, chat_request)
    assert factory is not None
    whole_content, whole_calls = whole_text_calls(
        _parser_cls("hermes")(tiny_llama_tokenizer, chat_request.tools), chat_request, HERMES_TEXT
    )
    for size in (1, 4, 1000):
        extractor = factory()
        assert isinstance(extractor, VllmParserExtractor)
        pieces = [HERMES_TEXT[i : i + size] for i in range(0, len(HERMES_TEXT), size)]
        for number, piece in enumerate(pieces):
            extractor.feed(piece, final=number == len(pieces) - 1)
        assert extractor.content.strip() == whole_content.strip() == "Let me check."
        calls = extractor.calls()
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [
            (name, json.loads(arguments)) for _, name, arguments in whole_calls
        ]
        assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}


def test_forced_calls_use_vllms_schema_and_the_shared_reader(tiny_llama_tokenizer: Any) -> None:
    request = _request(tool_choice="required", parallel_tool_calls=False)
    constraint = structured_outputs(request, vllm_chat_request(request))
    assert constraint is not None and constraint.json["maxItems"] == 1
    assert constraint.json["items"]["anyOf"][0]["properties"]["name"]["enum"] == ["get_weather"]
    factory = extractor_factory(
        request, _parser_cls("hermes"), tiny_llama_tokenizer, vllm_chat_request(request)
    )
    assert factory is not None
    content, calls = extract_all(factory(), '[{"name":"get_weather","parameters":{"city":"Oslo"}}]')
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city":"Oslo"}')]
    named = _request(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert structured_outputs(named, vllm_chat_request(named)).json == TOOL["function"]["parameters"]


def test_response_format_maps_to_structured_outputs() -> None:
    plain = GenerateRequest.model_validate(
        {
            "request_id": "r",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"},
        }
    )
    assert structured_outputs(plain, None).json_object is True
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    shaped = GenerateRequest.model_validate(
        {
            "request_id": "r",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        }
    )
    assert structured_outputs(shaped, None).json == schema


def test_parser_names() -> None:
    assert parser_name("llama", None) == "llama3_json"
    assert parser_name("qwen2", None) == "hermes"
    assert parser_name("llama", "pythonic") == "pythonic"
    from infergate_common.errors import StartupError

    with pytest.raises(StartupError):
        parser_name("llama", "no-such-parser")
