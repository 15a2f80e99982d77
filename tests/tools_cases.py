"""Tools and schemas shared by the tool-calling and structured-output tests.

Random-weight models wander: every value here is bounded (enums, integer
ranges, strings with a pattern of bounded length, short arrays), so a constrained answer
always closes within a few dozen tokens and the tests can demand that it
validates.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Berlin", "Tokyo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER_PARAMS},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Time now", "parameters": TIME_PARAMS},
    },
]
PARAMS_BY_NAME = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        # A pattern, not maxLength: xgrammar 0.2.8 lets raw control characters
        # into maxLength-bounded strings, which JSON parsers then reject.
        "answer": {"type": "string", "pattern": "^[a-z ]{0,12}$"},
        "mood": {"type": "string", "enum": ["happy", "sad"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "sure": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["answer", "mood", "score", "sure", "tags"],
    "additionalProperties": False,
}

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_call(name: str, arguments: str) -> dict[str, Any]:
    """A call of an offered tool whose arguments validate; returns them."""
    assert name in PARAMS_BY_NAME, name
    parsed = json.loads(arguments)
    jsonschema.validate(parsed, PARAMS_BY_NAME[name])
    return parsed


def reassemble(chunks: list[dict[str, Any]]) -> dict[int, dict[int, dict[str, str]]]:
    """Per choice, per call index: id, name and arguments from streamed
    ``delta.tool_calls``, checking OpenAI's order (id, type and name first)."""
    calls: dict[int, dict[int, dict[str, str]]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for piece in choice["delta"].get("tool_calls") or []:
                per_choice = calls.setdefault(choice["index"], {})
                if piece["index"] not in per_choice:
                    assert piece["id"].startswith("call_"), piece
                    assert piece["type"] == "function", piece
                    assert piece["function"]["name"], piece
                    per_choice[piece["index"]] = {
                        "id": piece["id"],
                        "name": piece["function"]["name"],
                        "arguments": piece["function"].get("arguments", ""),
                    }
                else:
                    assert "id" not in piece and "name" not in piece["function"], piece
                    per_choice[piece["index"]]["arguments"] += piece["function"]["arguments"]
    return calls
