"""JSON mode and structured outputs (``response_format``) through the real
router on both backends: every answer parses, every json_schema answer
validates, even from a random-weight model, and the openai SDK's
``chat.completions.parse`` fills a pydantic model."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
import requests
from harness.stack import Stack
from pydantic import BaseModel, Field
from tools_cases import ANSWER_SCHEMA, MESSAGES


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0, timeout=120)


def _schema_format(strict: bool = True) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": strict},
    }


def test_json_schema_answers_validate(client: openai.OpenAI, tools_model: str) -> None:
    completion = client.chat.completions.create(
        model=tools_model,
        messages=MESSAGES,  # type: ignore[arg-type]
        response_format=_schema_format(),  # type: ignore[arg-type]
        n=3,
        seed=5,
        max_tokens=160,
    )
    assert len(completion.choices) == 3
    for choice in completion.choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content or ""), ANSWER_SCHEMA)


def test_json_object_answers_parse(client: openai.OpenAI, tools_model: str) -> None:
    for seed in (1, 2):
        completion = client.chat.completions.create(
            model=tools_model,
            messages=MESSAGES,  # type: ignore[arg-type]
            response_format={"type": "json_object"},
            seed=seed,
            max_tokens=200,
        )
        choice = completion.choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content or ""), dict)
        else:
            # Any JSON object may be long: a cut-off one is at least an object's start.
            assert (choice.message.content or "").startswith("{")


def test_streamed_json_schema_is_the_plain_answer(client: openai.OpenAI, tools_model: str) -> None:
    args: dict[str, Any] = {
        "model": tools_model,
        "messages": MESSAGES,
        "response_format": _schema_format(),
        "seed": 9,
        "max_tokens": 160,
    }
    plain = client.chat.completions.create(**args).choices[0].message.content
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(stream=True, **args)
        if chunk.choices
    ]
    assert "".join(pieces) == plain
    jsonschema.validate(json.loads(plain or ""), ANSWER_SCHEMA)


class Forecast(BaseModel):
    city: Literal["Paris", "Berlin"]
    days: int = Field(ge=1, le=7)
    rain: bool
    note: str = Field(pattern="^[a-z ]{0,10}$")


def test_sdk_parse_fills_a_pydantic_model(client: openai.OpenAI, tools_model: str) -> None:
    completion = client.chat.completions.parse(
        model=tools_model,
        messages=MESSAGES,  # type: ignore[arg-type]
        response_format=Forecast,
        seed=4,
        max_tokens=120,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Forecast)
    assert parsed.city in ("Paris", "Berlin") and 1 <= parsed.days <= 7


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}},
        {"type": "json_schema"},
        {"type": "yaml"},
    ],
)
def test_bad_response_format_is_400(stack: Stack, tools_model: str, response_format: dict[str, Any]) -> None:
    body = {"model": tools_model, "messages": MESSAGES, "max_tokens": 4, "response_format": response_format}
    for stream in (False, True):
        response = requests.post(
            f"{stack.openai_url}/chat/completions", json={**body, "stream": stream}, timeout=60
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
