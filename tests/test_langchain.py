"""LangChain's ChatOpenAI pointed at the router's /openai/v1."""

from __future__ import annotations

import pytest
from harness.stack import Stack
from langchain_openai import ChatOpenAI

pytestmark = pytest.mark.usefixtures("tiny_llm")


@pytest.fixture(scope="module")
def chat(stack: Stack) -> ChatOpenAI:
    assert stack.openai_url.endswith("/openai/v1")
    return ChatOpenAI(
        base_url=stack.openai_url,
        api_key="unused",  # type: ignore[arg-type]
        model="tiny-llm",
        max_tokens=12,  # type: ignore[call-arg]
        temperature=0,
        max_retries=0,
        timeout=60,
    )


def test_invoke(chat: ChatOpenAI) -> None:
    answer = chat.invoke("Hello, who are you?")
    assert isinstance(answer.content, str)
    assert answer.response_metadata["finish_reason"] in ("length", "stop")
    assert answer.usage_metadata is not None
    assert 1 <= answer.usage_metadata["output_tokens"] <= 12


def test_stream_gives_the_invoked_answer(chat: ChatOpenAI) -> None:
    prompt = [("system", "You are terse."), ("human", "Count to ten")]
    whole = chat.invoke(prompt)
    pieces = list(chat.stream(prompt))
    assert len(pieces) > 1
    assert "".join(str(piece.content) for piece in pieces) == whole.content
