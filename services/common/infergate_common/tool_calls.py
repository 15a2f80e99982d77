"""Tool calls and structured outputs, as both workers see them.

* What a request asks for: :func:`check_tools` (the 400s), :func:`tool_call_schema`
  (the JSON schema that constrains ``tool_choice`` "required" or named,
  in vLLM's own format), :func:`template_messages` (history messages as chat
  templates expect them).
* Reading the output: a :class:`CallExtractor` per choice turns generated
  text, piece by piece, into content text and :class:`ToolCallDelta` pieces.
  Streams and JSON answers go through the same extractor, so a streamed
  call reassembles to exactly the call of the JSON answer.

  - ``tool_choice`` named: the whole output is the arguments object
    (:class:`NamedCallExtractor`);
  - ``tool_choice`` "required": the output is ``[{"name", "parameters"}, ...]``
    (:class:`RequiredCallsExtractor`), argument text streamed as it comes;
  - ``tool_choice`` "auto": the model's own format, by parser name
    (:data:`AUTO_PARSERS`: Hermes ``<tool_call>`` JSON, Llama 3 JSON,
    Mistral ``[TOOL_CALLS]``); text that is not a call stays content.
    worker-vllm uses vLLM's own parsers for "auto" instead.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from .errors import InvalidRequest
from .worker_api import ChatMessage, GenerateRequest, NamedToolChoice, ToolCall, ToolCallDelta, ToolSpec


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


# ------------------------------------------------------------ the request


def check_tools(request: GenerateRequest) -> None:
    """The 400s of ``tools``/``tool_choice``/``response_format`` that need no model."""
    if request.messages is None and (request.tools or request.tool_choice is not None):
        raise InvalidRequest("tools are only supported with chat messages", param="tools")
    choice = request.tool_choice
    if choice is not None and choice != "none" and not request.tools:
        raise InvalidRequest(
            "tool_choice is set but no tools are given; add 'tools' or drop 'tool_choice'",
            param="tool_choice",
        )
    names = [tool.function.name for tool in request.tools or []]
    if len(set(names)) != len(names):
        raise InvalidRequest("tool function names must be unique", param="tools")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequest(
            f"tool_choice names function {choice.function.name!r}, which is not among the tools "
            f"({', '.join(names)})",
            param="tool_choice",
        )
    for tool in request.tools or []:
        params = tool.function.parameters
        if params is not None and params.get("type", "object") != "object":
            raise InvalidRequest(
                f"the parameters of tool {tool.function.name!r} must be a JSON schema of type 'object'",
                param="tools",
            )


def forces_tool_call(request: GenerateRequest) -> bool:
    """Whether constrained decoding must produce tool calls."""
    choice = request.effective_tool_choice
    return choice == "required" or isinstance(choice, NamedToolChoice)


def _parameters(tool: ToolSpec) -> dict[str, Any]:
    # Empty or missing parameters still constrain the arguments to an object.
    return tool.function.parameters or {"type": "object", "properties": {}}


def tool_call_schema(request: GenerateRequest) -> dict[str, Any] | None:
    """The JSON schema of a forced call (the format vLLM's
    ``get_json_schema_from_tools`` uses): a named function's arguments
    object, or for "required" an array of ``{"name", "parameters"}``."""
    choice = request.effective_tool_choice
    tools = request.tools or []
    if isinstance(choice, NamedToolChoice):
        for tool in tools:
            if tool.function.name == choice.function.name:
                return _parameters(tool)
        return None
    if choice != "required":
        return None
    defs: dict[str, Any] = {}
    variants = []
    for tool in tools:
        params = dict(_parameters(tool))
        defs.update(params.pop("$defs", None) or {})
        variants.append(
            {
                "properties": {
                    "name": {"type": "string", "enum": [tool.function.name]},
                    "parameters": params,
                },
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": variants}}
    if request.parallel_tool_calls is False:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages for ``apply_chat_template``: the arguments of earlier tool
    calls as objects (OpenAI sends JSON text; templates render objects)."""
    conversation = []
    for message in messages:
        item = message.model_dump(exclude_none=True)
        calls = item.get("tool_calls")
        if isinstance(calls, list):
            item["tool_calls"] = [_template_call(call) for call in calls]
        conversation.append(item)
    return conversation


def _template_call(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise InvalidRequest(
                f"the arguments of tool call {call.get('id', '')!r} are not JSON: {exc}", param="messages"
            ) from exc
    return {**call, "function": function}


# ----------------------------------------------------------- the output

Pieces = tuple[str, list[ToolCallDelta]]


class CallExtractor:
    """Turns one choice's text into content and tool calls as it arrives.

    ``feed(text, final)`` returns the content to send now and the call
    pieces; ``final`` flushes whatever was held back. ``content`` and
    :meth:`calls` accumulate everything returned so far.
    """

    def __init__(self) -> None:
        self.content = ""
        self._calls: list[ToolCall] = []

    def feed(self, text: str, final: bool = False) -> Pieces:
        content, deltas = self._feed(text)
        if final:
            more_content, more_deltas = self._flush()
            content += more_content
            deltas += more_deltas
        self.content += content
        for delta in deltas:
            if delta.index == len(self._calls):
                self._calls.append(
                    ToolCall(id=delta.id or new_call_id(), name=delta.name or "", arguments="")
                )
            call = self._calls[delta.index]
            call.arguments += delta.arguments
        return content, _coalesce(deltas)

    def calls(self) -> list[ToolCall]:
        return [call.model_copy() for call in self._calls]

    def _feed(self, text: str) -> Pieces:
        raise NotImplementedError

    def _flush(self) -> Pieces:
        return "", []


def _coalesce(deltas: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """Consecutive argument pieces of one call as one piece."""
    merged: list[ToolCallDelta] = []
    for delta in deltas:
        last = merged[-1] if merged else None
        if last is not None and last.index == delta.index and delta.id is None and delta.name is None:
            last.arguments += delta.arguments
        else:
            merged.append(delta.model_copy())
    return [delta for delta in merged if delta.id is not None or delta.arguments]


def extract_all(extractor: CallExtractor, text: str) -> tuple[str, list[ToolCall]]:
    """The content and calls of a whole text (JSON answers)."""
    extractor.feed(text, final=True)
    return extractor.content, extractor.calls()


class NamedCallExtractor(CallExtractor):
    """``tool_choice`` named: the output is the arguments of that function."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.started = False

    def _header(self) -> list[ToolCallDelta]:
        if self.started:
            return []
        self.started = True
        return [ToolCallDelta(index=0, id=new_call_id(), name=self.name)]

    def _feed(self, text: str) -> Pieces:
        if not text:
            return "", []
        return "", [*self._header(), ToolCallDelta(index=0, arguments=text)]

    def _flush(self) -> Pieces:
        return "", self._header()


class RequiredCallsExtractor(CallExtractor):
    """``tool_choice`` "required": ``[{"name": ..., "parameters": {...}}, ...]``.

    A small JSON scanner: each item's ``name`` opens its call (id and name
    first), then the text of its ``parameters`` value streams as argument
    pieces. Arguments that come before the name wait for it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.string = ""
        self.last_string: str | None = None
        self.key: str | None = None
        self.awaiting_value = False
        self.reading_name = False
        # The parameters value being read: its nesting depth and string state.
        self.in_args = False
        self.args_depth = 0
        self.args_in_string = False
        self.args_escaped = False
        self.item = -1
        self.item_name: str | None = None
        self.item_started = False
        self.pending_args = ""

    def _feed(self, text: str) -> Pieces:
        deltas: list[ToolCallDelta] = []
        for ch in text:
            if self.in_args:
                self._args_char(ch, deltas)
                continue
            if self.in_string:
                self._string_char(ch, deltas)
                continue
            if ch.isspace():
                continue
            if self.awaiting_value:
                self.awaiting_value = False
                if self.depth == 2 and self.key in ("parameters", "arguments"):
                    self.in_args = True
                    self.args_depth = 0
                    self._args_char(ch, deltas)
                    continue
                self.reading_name = self.depth == 2 and self.key == "name" and ch == '"'
            if ch == '"':
                self.in_string, self.string = True, ""
            elif ch == ":" and self.depth == 2:
                self.key, self.awaiting_value = self.last_string, True
            elif ch in "{[":
                self.depth += 1
                if self.depth == 2 and ch == "{":
                    self.item += 1
                    self.item_name, self.item_started, self.pending_args = None, False, ""
            elif ch in "}]":
                if self.depth == 2 and ch == "}":
                    self._start_item(deltas)
                self.depth -= 1
        return "", deltas

    def _string_char(self, ch: str, deltas: list[ToolCallDelta]) -> None:
        if self.escaped:
            self.escaped = False
            self.string += ch
        elif ch == "\\":
            self.escaped = True
            self.string += ch
        elif ch == '"':
            self.in_string = False
            try:
                value = json.loads(f'"{self.string}"')
            except ValueError:
                value = self.string
            self.last_string = value
            if self.reading_name:
                self.reading_name = False
                self.item_name = value
                self._start_item(deltas)
        else:
            self.string += ch

    def _args_char(self, ch: str, deltas: list[ToolCallDelta]) -> None:
        if self.args_in_string:
            if self.args_escaped:
                self.args_escaped = False
            elif ch == "\\":
                self.args_escaped = True
            elif ch == '"':
                self.args_in_string = False
        elif ch == '"':
            self.args_in_string = True
        elif ch in "{[":
            self.args_depth += 1
        elif ch in "}]":
            if self.args_depth == 0:
                # The item closed right after a bare value.
                self.in_args = False
                self._start_item(deltas)
                self.depth -= 1
                return
            self.args_depth -= 1
        elif ch == "," and self.args_depth == 0:
            self.in_args = False
            return
        self._args_text(ch, deltas)
        if self.args_depth == 0 and not self.args_in_string and ch in "}]":
            self.in_args = False

    def _args_text(self, text: str, deltas: list[ToolCallDelta]) -> None:
        if self.item_started:
            deltas.append(ToolCallDelta(index=self.item, arguments=text))
        else:
            self.pending_args += text

    def _start_item(self, deltas: list[ToolCallDelta]) -> None:
        if self.item_started or self.item < 0 or self.item_name is None:
            return
        self.item_started = True
        deltas.append(
            ToolCallDelta(index=self.item, id=new_call_id(), name=self.item_name, arguments=self.pending_args)
        )
        self.pending_args = ""


# ------------------------------------------------- the model's own formats


def _call_from_json(value: Any) -> tuple[str, str] | None:
    """(name, arguments JSON) of ``{"name", "arguments" | "parameters"}``."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        return value["name"], arguments
    return value["name"], json.dumps(arguments, ensure_ascii=False)


def _call_deltas(first_index: int, calls: list[tuple[str, str]]) -> list[ToolCallDelta]:
    return [
        ToolCallDelta(index=first_index + offset, id=new_call_id(), name=name, arguments=arguments)
        for offset, (name, arguments) in enumerate(calls)
    ]


def _held_back(text: str, marker: str) -> int:
    """How many trailing characters of ``text`` could begin ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class HermesExtractor(CallExtractor):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes,
    Qwen 2.5 and 3); each complete call is sent once it closes."""

    start, end = "<tool_call>", "</tool_call>"

    def __init__(self) -> None:
        super().__init__()
        self.buffer = ""
        self.count = 0

    def _feed(self, text: str) -> Pieces:
        self.buffer += text
        content = ""
        deltas: list[ToolCallDelta] = []
        while True:
            at = self.buffer.find(self.start)
            if at < 0:
                keep = _held_back(self.buffer, self.start)
                content += self.buffer[: len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep :]
                return content, deltas
            content += self.buffer[:at]
            close = self.buffer.find(self.end, at)
            if close < 0:
                self.buffer = self.buffer[at:]
                return content, deltas
            body = self.buffer[at + len(self.start) : close]
            self.buffer = self.buffer[close + len(self.end) :]
            parsed = self._parse(body)
            if parsed is None:
                content += self.start + body + self.end
            else:
                deltas += _call_deltas(self.count, [parsed])
                self.count += 1

    def _parse(self, body: str) -> tuple[str, str] | None:
        try:
            return _call_from_json(json.loads(body))
        except ValueError:
            return None

    def _flush(self) -> Pieces:
        rest, self.buffer = self.buffer, ""
        if rest.startswith(self.start):
            # A call cut short by the end of generation: kept if it parses.
            parsed = self._parse(rest[len(self.start) :])
            if parsed is not None:
                self.count += 1
                return "", _call_deltas(self.count - 1, [parsed])
        return rest, []


class _WholeOutputExtractor(CallExtractor):
    """Formats recognised by how the output starts: content streams until
    then; a call is parsed once the output is complete."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = ""
        self.decided: bool | None = None  # True: a call

    def _starts_call(self, text: str) -> bool | None:
        """True, False, or None while undecided."""
        raise NotImplementedError

    def _parse(self, text: str) -> list[tuple[str, str]] | None:
        raise NotImplementedError

    def _feed(self, text: str) -> Pieces:
        self.buffer += text
        if self.decided is None:
            self.decided = self._starts_call(self.buffer)
        if self.decided is False:
            out, self.buffer = self.buffer, ""
            return out, []
        return "", []

    def _flush(self) -> Pieces:
        rest, self.buffer = self.buffer, ""
        if self.decided is not False:
            calls = self._parse(rest)
            if calls:
                return "", _call_deltas(0, calls)
        return rest, []


class Llama3JsonExtractor(_WholeOutputExtractor):
    """Llama 3.x: ``{"name": ..., "parameters": {...}}`` (optionally after
    ``<|python_tag|>``; several separated by ``;``)."""

    tag = "<|python_tag|>"

    def _starts_call(self, text: str) -> bool | None:
        stripped = text.lstrip()
        if not stripped:
            return None
        if stripped.startswith("{") or stripped.startswith(self.tag):
            return True
        return None if self.tag.startswith(stripped) else False

    def _parse(self, text: str) -> list[tuple[str, str]] | None:
        body = text.strip().removeprefix(self.tag).strip()
        decoder = json.JSONDecoder()
        calls = []
        position = 0
        while position < len(body):
            try:
                value, end = decoder.raw_decode(body, position)
            except ValueError:
                return None
            parsed = _call_from_json(value)
            if parsed is None:
                return None
            calls.append(parsed)
            position = end
            while position < len(body) and body[position] in " \n\t;":
                position += 1
        return calls


class MistralExtractor(_WholeOutputExtractor):
    """Mistral: content, then ``[TOOL_CALLS][{"name", "arguments"}, ...]``."""

    marker = "[TOOL_CALLS]"

    def __init__(self) -> None:
        super().__init__()
        self.decided = False
        self.in_calls = False

    def _feed(self, text: str) -> Pieces:
        self.buffer += text
        if self.in_calls:
            return "", []
        at = self.buffer.find(self.marker)
        if at >= 0:
            content, self.buffer = self.buffer[:at], self.buffer[at:]
            self.in_calls, self.decided = True, True
            return content, []
        keep = _held_back(self.buffer, self.marker)
        out = self.buffer[: len(self.buffer) - keep]
        self.buffer = self.buffer[len(self.buffer) - keep :]
        return out, []

    def _parse(self, text: str) -> list[tuple[str, str]] | None:
        body = text.removeprefix(self.marker).strip()
        try:
            value = json.loads(body)
        except ValueError:
            return None
        items = value if isinstance(value, list) else [value]
        calls = [_call_from_json(item) for item in items]
        if not calls or any(call is None for call in calls):
            return None
        return [call for call in calls if call is not None]


AUTO_PARSERS: dict[str, Callable[[], CallExtractor]] = {
    "hermes": HermesExtractor,
    "llama3_json": Llama3JsonExtractor,
    "mistral": MistralExtractor,
}

# Model families (config.model_type) and the format their templates teach.
FAMILY_PARSERS: dict[str, str] = {
    "llama": "llama3_json",
    "mistral": "mistral",
    "mixtral": "mistral",
    "qwen2": "hermes",
    "qwen2_moe": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
}
DEFAULT_PARSER = "hermes"


def parser_name_for(model_type: str | None, chosen: str | None = None) -> str:
    """The ``--tool_call_parser`` flag when given, else the family's format."""
    if chosen:
        if chosen not in AUTO_PARSERS:
            raise ValueError(f"unknown tool call parser {chosen!r}; known: {', '.join(sorted(AUTO_PARSERS))}")
        return chosen
    return FAMILY_PARSERS.get(model_type or "", DEFAULT_PARSER)


def forced_extractor(request: GenerateRequest) -> CallExtractor | None:
    """The extractor of a forced call (named or "required"), else None."""
    choice = request.effective_tool_choice
    if isinstance(choice, NamedToolChoice):
        return NamedCallExtractor(choice.function.name)
    if choice == "required":
        return RequiredCallsExtractor()
    return None


def extractor_factory(request: GenerateRequest, parser: str) -> Callable[[], CallExtractor] | None:
    """How to read each choice of ``request`` (None: plain text)."""
    choice = request.effective_tool_choice
    if choice == "none":
        return None
    if forced_extractor(request) is not None:
        return lambda: forced_extractor(request)  # type: ignore[return-value]
    return AUTO_PARSERS[parser]
