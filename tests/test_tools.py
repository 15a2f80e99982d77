"""Tool calling through the real router on both backends (worker-hf with
xgrammar, worker-vllm with vLLM's structured outputs), with the openai SDK.

Random weights never choose to call a tool, but constrained decoding must
still produce calls of offered tools whose arguments validate: that is what
these tests demand of ``tool_choice`` "required" and named. "auto" parsing of
real model formats is covered by the parser tests (test_tools_parsers.py).
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import requests
from harness.stack import Stack
from tools_cases import MESSAGES, TOOLS, check_call, reassemble


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0, timeout=120)


def _create(client: openai.OpenAI, model: str, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", MESSAGES)
    kwargs.setdefault("max_tokens", 96)
    return client.chat.completions.create(model=model, **kwargs)


def test_required_calls_are_offered_tools_with_valid_arguments(
    client: openai.OpenAI, tools_model: str
) -> None:
    completion = _create(
        client, tools_model, tools=TOOLS, tool_choice="required", n=2, seed=7, max_tokens=160
    )
    for choice in completion.choices:
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None
        calls = choice.message.tool_calls or []
        assert calls
        assert len({call.id for call in calls}) == len(calls)
        for call in calls:
            assert call.type == "function"
            assert call.id.startswith("call_")
            check_call(call.function.name, call.function.arguments)


def test_named_call_is_that_function(client: openai.OpenAI, tools_model: str) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    for seed in (1, 2):
        completion = _create(client, tools_model, tools=TOOLS, tool_choice=named, seed=seed)
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_time"
        assert check_call("get_time", call.function.arguments)["zone"] in ("UTC", "CET")


def test_no_parallel_calls_means_one_call(client: openai.OpenAI, tools_model: str) -> None:
    completion = _create(
        client, tools_model, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, seed=3
    )
    (call,) = completion.choices[0].message.tool_calls or []
    check_call(call.function.name, call.function.arguments)


def test_streamed_calls_reassemble_to_the_plain_answer(client: openai.OpenAI, tools_model: str) -> None:
    """Same seed, same tokens: the streamed pieces join to the plain calls
    (ids aside), the id and name come first, and finish_reason is tool_calls."""
    for tool_choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        args: dict[str, Any] = {
            "tools": TOOLS,
            "tool_choice": tool_choice,
            "parallel_tool_calls": False,
            "seed": 11,
            "max_tokens": 160,
        }
        plain = _create(client, tools_model, **args).choices[0]
        stream = _create(client, tools_model, stream=True, **args)
        chunks = [chunk.model_dump(exclude_unset=True) for chunk in stream]
        streamed = reassemble(chunks)[0]
        expected = plain.message.tool_calls or []
        assert [(c["name"], c["arguments"]) for c in streamed.values()] == [
            (call.function.name, call.function.arguments) for call in expected
        ]
        for call in streamed.values():
            check_call(call["name"], call["arguments"])
        reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert reasons[-1] == "tool_calls" and set(reasons[:-1]) == {None}


def test_history_with_tool_calls_and_results(client: openai.OpenAI, tools_model: str) -> None:
    history: list[Any] = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": json.dumps({"city": "Paris", "days": 1}),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"},
    ]
    completion = _create(client, tools_model, messages=history, tools=TOOLS, max_tokens=4)
    assert completion.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert completion.usage is not None and completion.usage.prompt_tokens > 20


def test_auto_with_random_weights_stays_content(client: openai.OpenAI, tools_model: str) -> None:
    completion = _create(client, tools_model, tools=TOOLS, max_tokens=8, temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert not choice.message.tool_calls
    assert isinstance(choice.message.content, str)


def test_tool_choice_none_is_plain_text(client: openai.OpenAI, tools_model: str) -> None:
    completion = _create(client, tools_model, tools=TOOLS, tool_choice="none", max_tokens=6)
    assert not completion.choices[0].message.tool_calls


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_bad_tools_are_400(stack: Stack, tools_model: str, extra: dict[str, Any], param: str) -> None:
    body = {"model": tools_model, "messages": MESSAGES, "max_tokens": 4, **extra}
    response = requests.post(f"{stack.openai_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param in (error["param"] or "") + error["message"]


def test_uncompilable_tool_schema_is_400(stack: Stack, tools_model: str) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "broken",
            "parameters": {
                "type": "object",
                "properties": {"x": {"$ref": "#/$defs/missing"}},
                "required": ["x"],
            },
        },
    }
    body = {
        "model": tools_model,
        "messages": MESSAGES,
        "max_tokens": 4,
        "tools": [tool],
        "tool_choice": "required",
    }
    response = requests.post(f"{stack.openai_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
