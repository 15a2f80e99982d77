"""Turning a generate request into token ids and limits, with the clear
400s: context overflow, echo on encoder-decoder models, bad token ids."""

from __future__ import annotations

from typing import Any

from infergate_common.errors import InvalidRequest
from infergate_common.worker_api import GenerateRequest

from ..loading import LoadedModel
from .detokenizer import decode
from .sequence import PreparedPrompt


def eos_token_ids(loaded: LoadedModel) -> frozenset[int]:
    """Every id that ends a sequence: the generation config's (one or a
    list), the model config's and the tokenizer's."""
    found: set[int] = set()
    generation_config = getattr(loaded.model, "generation_config", None)
    for value in (
        getattr(generation_config, "eos_token_id", None),
        getattr(loaded.config, "eos_token_id", None),
        getattr(loaded.tokenizer, "eos_token_id", None),
    ):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(v for v in value if isinstance(v, int))
    return frozenset(found)


def logits_width(loaded: LoadedModel) -> int:
    """How many token ids the model scores (its vocabulary, which may be
    larger than the tokenizer's)."""
    getter = getattr(loaded.model, "get_output_embeddings", None)
    weight = getattr(getter() if getter is not None else None, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(getattr(loaded.config, "vocab_size", None) or len(loaded.tokenizer))


def check_token_ids(ids: list[int], vocab_size: int) -> None:
    bad = [token for token in ids if token < 0 or token >= vocab_size]
    if bad:
        raise InvalidRequest(f"prompt token ids out of range 0..{vocab_size - 1}: {bad[:5]}", param="prompt")


def _limit_tokens(loaded: LoadedModel, prompt_len: int, max_tokens: int | None) -> int:
    limit = loaded.max_model_len
    if loaded.encoder_decoder:
        # The encoder reads the prompt, the decoder writes the completion:
        # each has the context length to itself.
        if prompt_len > limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens. However, your prompt has "
                f"{prompt_len} tokens. Please reduce the length of the prompt.",
                param="prompt",
                code="context_length_exceeded",
            )
        wanted = limit if max_tokens is None else max_tokens
        if wanted > limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{wanted} tokens for the completion. Please reduce max_tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return wanted
    if prompt_len >= limit:
        raise InvalidRequest(
            f"This model's maximum context length is {limit} tokens. However, your prompt has "
            f"{prompt_len} tokens, which leaves no room for a completion. Please reduce the length "
            "of the prompt.",
            param="prompt",
            code="context_length_exceeded",
        )
    wanted = limit - prompt_len if max_tokens is None else max_tokens
    if prompt_len + wanted > limit:
        raise InvalidRequest(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + wanted} tokens ({prompt_len} in the prompt, {wanted} for the completion). "
            "Please reduce the length of the prompt or max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return wanted


def prepare_prompt(
    request: GenerateRequest,
    loaded: LoadedModel,
    render_chat: Any,
    encode_text: Any,
    eos_ids: frozenset[int],
) -> PreparedPrompt:
    params = request.params
    if params.echo and loaded.encoder_decoder:
        raise InvalidRequest(
            "echo is not supported for encoder-decoder models: their completion does not continue the prompt",
            param="echo",
        )
    tokenizer = loaded.tokenizer
    if request.messages is not None:
        prompt_text = render_chat(
            request.messages,
            tools=request.tools,
            tools_required=request.effective_tool_choice == "auto",
        )
        # The chat template already holds the special tokens it wants.
        ids = encode_text(prompt_text, add_special_tokens=False)
    elif isinstance(request.prompt, str):
        prompt_text = request.prompt
        ids = encode_text(prompt_text)
    else:
        ids = list(request.prompt or [])
        check_token_ids(ids, len(tokenizer))
        prompt_text = decode(tokenizer, ids)
    if not ids:
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None or loaded.encoder_decoder:
            raise InvalidRequest("the prompt is empty", param="prompt")
        # A decoder needs one token to start from.
        ids = [bos]
    max_tokens = _limit_tokens(loaded, len(ids), params.max_tokens)
    return PreparedPrompt(
        request_id=request.request_id,
        prompt_ids=ids,
        params=params,
        max_tokens=max_tokens,
        echo_text=prompt_text if params.echo else None,
        eos_ids=eos_ids,
    )
