"""The prompt of a generation as token ids: a text through the tokenizer, a
chat through its template with the generation prompt, or token ids as given.
The worker tokenizes (not vLLM) so usage, the context check and echo all see
the same tokens the engine gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infergate_common.errors import InvalidRequest
from infergate_common.tool_calls import template_messages
from infergate_common.worker_api import ChatMessage, ToolSpec


@dataclass(frozen=True)
class RenderedPrompt:
    token_ids: list[int]
    # What ``echo`` returns before the completion.
    text: str
    # Where each token starts in ``text`` (echo with logprobs), when known.
    offsets: list[int] | None = None


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    """OpenAI content parts become the plain text chat templates expect."""
    data = message.model_dump(exclude_none=True)
    content = data.get("content")
    if isinstance(content, list):
        data["content"] = "".join(
            str(part.get("text", "")) for part in content if part.get("type", "text") == "text"
        )
    return data


def render_chat(
    tokenizer: Any,
    messages: list[ChatMessage],
    model_name: str,
    tools: list[ToolSpec] | None = None,
    tools_required: bool = False,
) -> str:
    """The chat through the template; ``tools`` rendered by it, and a 400
    when it ignores them but the model must see them (``tools_required``)."""
    if not has_chat_template(tokenizer):
        raise InvalidRequest(
            f"model {model_name} has no chat template; use completions instead", param="messages"
        )
    conversation = []
    for message, prepared in zip(messages, template_messages(messages), strict=True):
        item = _message_dict(message)
        if "tool_calls" in prepared:
            # Earlier calls' arguments as objects, as templates render them.
            item["tool_calls"] = prepared["tool_calls"]
        conversation.append(item)
    tool_dicts = [tool.model_dump(exclude_none=True) for tool in tools] if tools else None
    text = _apply_template(tokenizer, conversation, tool_dicts)
    if tool_dicts and tools_required and text == _apply_template(tokenizer, conversation, None):
        raise InvalidRequest(
            f"the chat template of model {model_name} cannot render tools; use tool_choice "
            "'required' or a named function (constrained decoding serves those)",
            param="tools",
        )
    return text


def _apply_template(tokenizer: Any, conversation: list[dict[str, Any]], tools: list[Any] | None) -> str:
    try:
        text = tokenizer.apply_chat_template(
            conversation, tools=tools, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:
        raise InvalidRequest(f"chat template failed: {exc}", param="messages") from exc
    return str(text)


def check_token_ids(tokenizer: Any, token_ids: list[int], param: str) -> None:
    vocab_size = len(tokenizer)
    bad = [token for token in token_ids if token < 0 or token >= vocab_size]
    if bad:
        raise InvalidRequest(f"token ids out of range 0..{vocab_size - 1}: {bad[:5]}", param=param)


def _text_offsets(tokenizer: Any, text: str, token_ids: list[int]) -> list[int] | None:
    if not getattr(tokenizer, "is_fast", False):
        return None
    encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    if list(encoded["input_ids"]) != token_ids:
        return None
    return [start for start, _ in encoded["offset_mapping"]]


def render_prompt(
    tokenizer: Any,
    prompt: str | list[int] | None,
    messages: list[ChatMessage] | None,
    model_name: str,
    want_offsets: bool = False,
    tools: list[ToolSpec] | None = None,
    tools_required: bool = False,
) -> RenderedPrompt:
    if messages is not None:
        text = render_chat(tokenizer, messages, model_name, tools, tools_required)
        # The template already holds the special tokens it wants.
        token_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        rendered = RenderedPrompt(token_ids, text)
    elif isinstance(prompt, list):
        check_token_ids(tokenizer, prompt, "prompt")
        rendered = RenderedPrompt(list(prompt), tokenizer.decode(prompt))
    else:
        text = prompt or ""
        token_ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        offsets = _text_offsets(tokenizer, text, token_ids) if want_offsets else None
        rendered = RenderedPrompt(token_ids, text, offsets)
    if not rendered.token_ids:
        raise InvalidRequest("the prompt is empty", param="messages" if messages is not None else "prompt")
    return rendered
