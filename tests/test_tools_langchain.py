"""LangChain's ``bind_tools`` and ``with_structured_output`` on ``ChatOpenAI``
through the real router, on both backends. The tool choice is forced
(random weights never choose a tool), so every call must be a valid one."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import pytest
from harness.stack import Stack
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field
from tools_cases import ANSWER_SCHEMA, WEATHER_PARAMS


# Lower-case class names: LangChain names the tool after the class.
class get_weather(BaseModel):
    """Weather forecast for a city."""

    city: Literal["Paris", "Berlin", "Tokyo"]
    days: int = Field(ge=1, le=7)


class get_time(BaseModel):
    """Time now in a zone."""

    zone: Literal["UTC", "CET"]


class Forecast(BaseModel):
    city: Literal["Paris", "Berlin"]
    days: int = Field(ge=1, le=7)
    rain: bool


@pytest.fixture
def llm(stack: Stack, tools_model: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=stack.openai_url,
        api_key="unused",  # type: ignore[arg-type]
        model=tools_model,
        max_tokens=120,  # type: ignore[call-arg]
        seed=3,
        timeout=120,
        max_retries=0,
    )


def _check_calls(message: AIMessage) -> None:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call["id"]
        schema = WEATHER_PARAMS if call["name"] == "get_weather" else get_time.model_json_schema()
        assert call["name"] in ("get_weather", "get_time")
        jsonschema.validate(call["args"], schema)


def test_bind_tools_invoke_with_tool_choice(llm: ChatOpenAI) -> None:
    for choice in ("get_weather", "any"):
        message = llm.bind_tools([get_weather, get_time], tool_choice=choice).invoke("Weather in Paris?")
        assert isinstance(message, AIMessage)
        _check_calls(message)
        if choice == "get_weather":
            assert [call["name"] for call in message.tool_calls] == ["get_weather"]
        assert message.response_metadata["finish_reason"] == "tool_calls"


def test_bind_tools_stream_gathers_to_the_invoked_calls(llm: ChatOpenAI) -> None:
    bound = llm.bind_tools([get_weather, get_time], tool_choice="get_weather")
    invoked = bound.invoke("Weather in Berlin?")
    gathered: Any = None
    for chunk in bound.stream("Weather in Berlin?"):
        assert isinstance(chunk, AIMessageChunk)
        gathered = chunk if gathered is None else gathered + chunk
    assert isinstance(gathered, AIMessageChunk)
    _check_calls(gathered)
    assert [(c["name"], c["args"]) for c in gathered.tool_calls] == [
        (c["name"], c["args"])
        for c in invoked.tool_calls  # type: ignore[attr-defined]
    ]


def test_tool_results_go_back_to_the_model(llm: ChatOpenAI) -> None:
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    first = bound.invoke("Weather in Tokyo?")
    assert isinstance(first, AIMessage)
    call = first.tool_calls[0]
    history = [
        HumanMessage("Weather in Tokyo?"),
        first,
        ToolMessage(json.dumps({"sky": "clear"}), tool_call_id=call["id"] or ""),
    ]
    answer = llm.bind_tools([get_weather]).invoke(history, max_tokens=4)
    assert isinstance(answer, AIMessage)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_pydantic(llm: ChatOpenAI, method: str) -> None:
    result = llm.with_structured_output(Forecast, method=method).invoke("Forecast for Paris?")  # type: ignore[arg-type]
    assert isinstance(result, Forecast)


def test_with_structured_output_json_mode(llm: ChatOpenAI) -> None:
    """JSON mode constrains to some JSON object; a schema given as a dict
    comes back as that parsed dict."""
    structured = llm.with_structured_output(ANSWER_SCHEMA, method="json_mode", include_raw=True)
    result: Any = structured.invoke("Answer in JSON.", max_tokens=200)
    raw = result["raw"]
    assert isinstance(raw, AIMessage)
    if raw.response_metadata["finish_reason"] == "stop":
        assert result["parsing_error"] is None
        assert isinstance(result["parsed"], dict)
    else:
        assert str(raw.content).startswith("{")


def test_with_structured_output_json_schema_dict(llm: ChatOpenAI) -> None:
    schema = {"title": "answer", "description": "An answer.", **ANSWER_SCHEMA}
    result: Any = llm.with_structured_output(schema, method="json_schema", strict=True).invoke(
        "Answer.", max_tokens=160
    )
    jsonschema.validate(result, ANSWER_SCHEMA)
