"""LlamaIndex's ``OpenAILike`` through the real router (worker-hf and
worker-vllm): chat, stream, forced tool calls that run the Python function,
and the function-calling agent (``FunctionAgent``) from question to answer."""

import asyncio
from typing import Literal

import jsonschema
import pytest
from harness.stack import Stack
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

CALLED: list[tuple[str, int]] = []


def get_weather(city: Literal["Paris", "Berlin", "Tokyo"], days: int) -> str:
    """Weather forecast for a city over some days."""
    CALLED.append((city, days))
    return f"sunny in {city} for {days} days"


WEATHER_TOOL = FunctionTool.from_defaults(fn=get_weather)


@pytest.fixture
def llm(stack: Stack, tools_model: str) -> OpenAILike:
    return OpenAILike(
        model=tools_model,
        api_base=stack.openai_url,
        api_key="unused",
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=1024,
        max_tokens=128,
        timeout=120,
        max_retries=0,
        additional_kwargs={"seed": 5},
    )


def test_chat_and_stream(llm: OpenAILike) -> None:
    messages = [ChatMessage(role="user", content="Hello!")]
    answer = llm.chat(messages)
    assert answer.message.role == "assistant"
    assert isinstance(answer.message.content, str)
    pieces = [chunk.delta or "" for chunk in llm.stream_chat(messages)]
    # Same seed, same tokens.
    assert "".join(pieces) == answer.message.content


def test_required_tool_call_runs_the_function(llm: OpenAILike) -> None:
    CALLED.clear()
    response = llm.chat_with_tools([WEATHER_TOOL], "Weather in Paris?", tool_required=True)
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "get_weather"
    jsonschema.validate(selection.tool_kwargs, WEATHER_TOOL.metadata.get_parameters_dict())
    output = llm.predict_and_call([WEATHER_TOOL], "Weather in Berlin?", tool_required=True)
    assert CALLED and output.response.startswith("sunny in")


def test_function_agent_answers(llm: OpenAILike) -> None:
    """The agent offers the tool ("auto"); a random model answers in text,
    which ends the agent's loop with that answer."""
    agent = FunctionAgent(tools=[WEATHER_TOOL], llm=llm, system_prompt="You answer about weather.")

    async def run() -> str:
        return str(await agent.run(user_msg="Weather in Tokyo?"))

    answer = asyncio.run(asyncio.wait_for(run(), timeout=120))
    assert isinstance(answer, str)
