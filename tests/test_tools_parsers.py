"""Reading tool calls out of model text ("auto" and forced calls), on the
formats real models write: Hermes / Qwen ``<tool_call>``, Llama 3 JSON,
Mistral ``[TOOL_CALLS]``. Each text is fed whole and in pieces of every
size: the streamed pieces must reassemble to the whole-text answer."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from infergate_common.tool_calls import (
    CallExtractor,
    HermesExtractor,
    Llama3JsonExtractor,
    MistralExtractor,
    NamedCallExtractor,
    RequiredCallsExtractor,
    extract_all,
    parser_name_for,
)
from infergate_common.worker_api import ToolCall

# (extractor, model text, expected content, expected [(name, arguments)])
CASES: list[tuple[Callable[[], CallExtractor], str, str, list[tuple[str, dict[str, object]]]]] = [
    (
        HermesExtractor,
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
        "",
        [("get_weather", {"city": "Paris", "days": 2})],
    ),
    (
        HermesExtractor,
        "Let me look that up.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>',
        "Let me look that up.\n\n",
        [("get_weather", {"city": "Zürich"}), ("get_time", {"zone": "CET"})],
    ),
    # Qwen at EOS without the closing tag.
    (HermesExtractor, '<tool_call>\n{"name": "f", "arguments": {}}', "", [("f", {})]),
    (HermesExtractor, "a < b and <tool is not a tag", "a < b and <tool is not a tag", []),
    (HermesExtractor, "<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", []),
    (
        Llama3JsonExtractor,
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        Llama3JsonExtractor,
        '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}',
        "",
        [("a", {"x": 1}), ("b", {})],
    ),
    (Llama3JsonExtractor, "The answer is 4.", "The answer is 4.", []),
    (Llama3JsonExtractor, '{"not": "a call"}', '{"not": "a call"}', []),
    (
        MistralExtractor,
        'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "Sure. ",
        [("get_weather", {"city": "Paris"})],
    ),
    (MistralExtractor, "No [TOOL] here", "No [TOOL] here", []),
    (
        lambda: NamedCallExtractor("get_time"),
        '{"zone": "UTC"}',
        "",
        [("get_time", {"zone": "UTC"})],
    ),
    (
        RequiredCallsExtractor,
        '[{"name": "get_weather", "parameters": {"city": "Pa\\"ris", "n": [1, {"a": "}"}]}}, '
        '{"parameters": {"zone": "CET"}, "name": "get_time"}]',
        "",
        [("get_weather", {"city": 'Pa"ris', "n": [1, {"a": "}"}]}), ("get_time", {"zone": "CET"})],
    ),
    (
        RequiredCallsExtractor,
        '[{"name":"f","parameters":{}}]',
        "",
        [("f", {})],
    ),
]


def _calls(calls: list[ToolCall]) -> list[tuple[str, dict[str, object]]]:
    return [(call.name, json.loads(call.arguments)) for call in calls]


@pytest.mark.parametrize(("make", "text", "content", "expected"), CASES)
def test_whole_text(
    make: Callable[[], CallExtractor], text: str, content: str, expected: list[tuple[str, dict[str, object]]]
) -> None:
    got_content, calls = extract_all(make(), text)
    assert got_content == content
    assert _calls(calls) == expected
    assert all(call.id.startswith("call_") for call in calls)
    assert len({call.id for call in calls}) == len(calls)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(("make", "text", "content", "expected"), CASES)
def test_pieces_reassemble(
    make: Callable[[], CallExtractor],
    text: str,
    content: str,
    expected: list[tuple[str, dict[str, object]]],
    size: int,
) -> None:
    extractor = make()
    streamed_content = ""
    calls: dict[int, dict[str, str]] = {}
    pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    for number, piece in enumerate(pieces):
        out, deltas = extractor.feed(piece, final=number == len(pieces) - 1)
        streamed_content += out
        for delta in deltas:
            if delta.index not in calls:
                # The first piece of a call names it.
                assert delta.id is not None and delta.name
                calls[delta.index] = {"name": delta.name, "arguments": ""}
            else:
                assert delta.id is None and delta.name is None
            calls[delta.index]["arguments"] += delta.arguments
    assert streamed_content == content
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == expected


def test_parser_by_family_and_flag() -> None:
    assert parser_name_for("qwen2") == "hermes"
    assert parser_name_for("llama") == "llama3_json"
    assert parser_name_for("mistral") == "mistral"
    assert parser_name_for("gpt2") == "hermes"
    assert parser_name_for("llama", "hermes") == "hermes"
    with pytest.raises(ValueError, match="unknown tool call parser"):
        parser_name_for("llama", "nonsense")


def test_router_chunks_a_call_as_openai_streams_it() -> None:
    """One worker delta with a whole call becomes two chunks: id, type and
    name with empty arguments, then the arguments; a second call's header
    may share the chunk of the first call's arguments."""
    from infergate_common.worker_api import ToolCallDelta
    from infergate_router.protocols.openai.translate import tool_call_chunks, tool_call_deltas

    deltas = [
        ToolCallDelta(index=0, id="call_a", name="f", arguments='{"x": 1}'),
        ToolCallDelta(index=1, id="call_b", name="g", arguments="{}"),
    ]
    chunks = [tool_call_deltas(chunk) for chunk in tool_call_chunks(deltas)]
    assert chunks == [
        [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}],
        [
            {"index": 0, "function": {"arguments": '{"x": 1}'}},
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}},
        ],
        [{"index": 1, "function": {"arguments": "{}"}}],
    ]
    for chunk in chunks:
        assert len({entry["index"] for entry in chunk}) == len(chunk)


def test_router_answer_has_null_content_and_tool_calls() -> None:
    from infergate_common.worker_api import GenerateChoice, GenerateResponse, ToolCall, Usage
    from infergate_router.protocols.openai.translate import chat_completion

    response = GenerateResponse(
        request_id="r",
        choices=[
            GenerateChoice(
                index=0,
                text="",
                finish_reason="tool_calls",
                completion_tokens=5,
                tool_calls=[ToolCall(id="call_a", name="f", arguments="{}")],
            ),
            GenerateChoice(index=1, text="hi", finish_reason="stop", completion_tokens=1),
        ],
        usage=Usage(prompt_tokens=3, completion_tokens=6, total_tokens=9),
    )
    body = json.loads(chat_completion("r", 0, "m", response).model_dump_json())
    first, second = body["choices"]
    assert first["finish_reason"] == "tool_calls"
    assert first["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    assert second["message"] == {"role": "assistant", "content": "hi"}
