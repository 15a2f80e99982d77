"""Between OpenAI shapes and the internal worker API."""

from __future__ import annotations

import base64
import struct
from typing import Any

from infergate_common.errors import InvalidRequest
from infergate_common.registry_api import ModelRecord
from infergate_common.tool_calls import check_tools
from infergate_common.worker_api import (
    EncodeResponse,
    FinishReason,
    GenerateRequest,
    GenerateResponse,
    SamplingParams,
    Task,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
)

from ...limits import logit_bias_ids
from .models import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatLogprobs,
    ChatTokenLogprob,
    ChatToolCall,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingUsage,
    FunctionCall,
    TopLogprob,
    Usage,
    _Sampling,
)

# The worker's reasons that OpenAI does not have: a cancelled or failed
# choice simply stopped.
_FINISH: dict[str, str] = {
    "stop": "stop",
    "length": "length",
    "abort": "stop",
    "error": "stop",
    "tool_calls": "tool_calls",
}


def finish_reason(reason: FinishReason | str | None) -> str | None:
    return None if reason is None else _FINISH.get(reason, "stop")


# ----------------------------------------------------------- model checks


_TABULAR_HINT = (
    " It predicts from numeric rows: use KServe v1 POST /v1/models/<name>:predict or v2 "
    "POST /v2/models/<name>/infer."
)


def require_generative(model: ModelRecord, route: str) -> None:
    if not model.task.generative:
        hint = " Use /openai/v1/embeddings." if model.task == Task.TEXT_EMBEDDING else ""
        if model.task == Task.TABULAR:
            hint = _TABULAR_HINT
        raise InvalidRequest(
            f"Model {model.name} is a {model.task.value} model and does not support {route}.{hint}",
            param="model",
        )


def require_chat(model: ModelRecord) -> None:
    require_generative(model, "/chat/completions")
    if not model.chat_template:
        raise InvalidRequest(
            f"Model {model.name} has no chat template, so it cannot serve chat completions; "
            "use /openai/v1/completions with a plain prompt.",
            param="messages",
        )


def require_embeddings(model: ModelRecord) -> None:
    if model.task != Task.TEXT_EMBEDDING:
        hint = _TABULAR_HINT if model.task == Task.TABULAR else ""
        raise InvalidRequest(
            f"Model {model.name} is a {model.task.value} model and does not support /embeddings.{hint}",
            param="model",
        )


# ------------------------------------------------------------- sampling


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _sampling(body: _Sampling, max_tokens: int | None, logprobs: int | None, echo: bool) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0.0:
        # The limit of nucleus sampling as top_p shrinks is greedy decoding.
        temperature, top_p = 0.0, 1.0
    return SamplingParams(
        n=body.n or 1,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=-1 if body.top_k is None else body.top_k,
        seed=body.seed,
        stop=_stops(body.stop),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logprobs=logprobs,
        echo=echo,
        ignore_eos=bool(body.ignore_eos),
        logit_bias=logit_bias_ids(body.logit_bias),
    )


def completion_params(body: CompletionRequest, model: ModelRecord) -> SamplingParams:
    if body.echo and model.encoder_decoder:
        raise InvalidRequest(
            f"echo is not supported by {model.name}: an encoder-decoder model does not continue its prompt.",
            param="echo",
        )
    return _sampling(body, body.max_tokens, body.logprobs, bool(body.echo))


def chat_params(body: ChatCompletionRequest) -> SamplingParams:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens or body.max_tokens
    return _sampling(body, max_tokens, logprobs, False)


def completion_prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """OpenAI's four prompt forms as a list of single prompts."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    if all(isinstance(item, int) for item in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    prompts: list[str | list[int]] = list(prompt)  # type: ignore[arg-type]
    if any(isinstance(item, list) and not item for item in prompts):
        raise InvalidRequest("a token prompt must not be empty", param="prompt")
    return prompts


def embedding_inputs(
    raw: str | list[str] | list[int] | list[list[int]],
) -> tuple[list[str], list[list[int]]]:
    """Texts, or token id lists to detokenize first (LangChain sends tokens)."""
    texts: list[str] = []
    tokens: list[list[int]] = []
    if isinstance(raw, str):
        texts = [raw]
    elif not raw:
        raise InvalidRequest("input must not be empty", param="input")
    elif all(isinstance(item, int) for item in raw):
        tokens = [[int(item) for item in raw]]  # type: ignore[arg-type]
    else:
        for item in raw:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list):
                tokens.append([int(i) for i in item])
    if any(not text for text in texts) or any(not ids for ids in tokens):
        raise InvalidRequest("input must not contain empty strings or empty token lists", param="input")
    return texts, tokens


# ------------------------------------------------------------- logprobs


def completion_logprobs(tokens: list[TokenLogprob] | None) -> CompletionLogprobs | None:
    if tokens is None:
        return None
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[
            {top.token: top.logprob for top in t.top} if t.logprob is not None else None for t in tokens
        ],
        text_offset=[t.text_offset for t in tokens],
    )


def chat_logprobs(tokens: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if tokens is None:
        return None
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=t.token,
                logprob=t.logprob if t.logprob is not None else 0.0,
                bytes=t.bytes if t.bytes is not None else list(t.token.encode()),
                top_logprobs=[
                    TopLogprob(
                        token=top.token,
                        logprob=top.logprob,
                        bytes=top.bytes if top.bytes is not None else list(top.token.encode()),
                    )
                    for top in t.top
                ],
            )
            for t in tokens
        ]
    )


# ------------------------------------------------------------- responses


def _usage(responses: list[GenerateResponse]) -> Usage:
    prompt = sum(r.usage.prompt_tokens for r in responses)
    completion = sum(r.usage.completion_tokens for r in responses)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def completion(
    request_id: str, created: int, model: str, n: int, responses: list[GenerateResponse]
) -> Completion:
    choices = [
        CompletionChoice(
            index=position * n + choice.index,
            text=choice.text,
            logprobs=completion_logprobs(choice.logprobs),
            finish_reason=finish_reason(choice.finish_reason),
        )
        for position, response in enumerate(responses)
        for choice in response.choices
    ]
    return Completion(
        id=f"cmpl-{request_id}", created=created, model=model, choices=choices, usage=_usage(responses)
    )


def tool_calls(calls: list[ToolCall] | None) -> list[ChatToolCall] | None:
    if not calls:
        return None
    return [
        ChatToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
        for call in calls
    ]


def tool_call_deltas(deltas: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """OpenAI's ``delta.tool_calls`` entries: id, type and name on a call's
    first piece, argument text on the later ones."""
    rendered: list[dict[str, Any]] = []
    for delta in deltas:
        if delta.id is not None:
            function = {"name": delta.name or "", "arguments": delta.arguments}
            rendered.append({"index": delta.index, "id": delta.id, "type": "function", "function": function})
        else:
            rendered.append({"index": delta.index, "function": {"arguments": delta.arguments}})
    return rendered


def tool_call_chunks(deltas: list[ToolCallDelta]) -> list[list[ToolCallDelta]]:
    """The pieces of one worker delta as OpenAI streams them, one chunk's
    worth each: a call's id and name alone first (empty arguments), then its
    arguments, and never two pieces of one call in the same chunk (clients
    merge pieces across chunks by index, not within one)."""
    chunks: list[list[ToolCallDelta]] = [[]]
    for delta in deltas:
        pieces = [delta]
        if delta.id is not None and delta.arguments:
            pieces = [
                delta.model_copy(update={"arguments": ""}),
                ToolCallDelta(index=delta.index, arguments=delta.arguments),
            ]
        for piece in pieces:
            if any(other.index == piece.index for other in chunks[-1]):
                chunks.append([])
            chunks[-1].append(piece)
    return chunks


def chat_generate_request(
    request_id: str, body: ChatCompletionRequest, params: SamplingParams
) -> GenerateRequest:
    req = GenerateRequest(
        request_id=request_id,
        messages=body.messages,
        params=params,
        stream=bool(body.stream),
        tools=body.tools,
        tool_choice=body.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=body.response_format,
    )
    check_tools(req)
    return req


def chat_completion(request_id: str, created: int, model: str, response: GenerateResponse) -> ChatCompletion:
    choices = [
        ChatChoice(
            index=choice.index,
            message=AssistantMessage(
                content=None if choice.tool_calls and not choice.text else choice.text,
                tool_calls=tool_calls(choice.tool_calls),
            ),
            logprobs=chat_logprobs(choice.logprobs),
            finish_reason=finish_reason(choice.finish_reason),
        )
        for choice in response.choices
    ]
    return ChatCompletion(
        id=f"chatcmpl-{request_id}", created=created, model=model, choices=choices, usage=_usage([response])
    )


def embeddings(model: str, response: EncodeResponse, encoding_format: str) -> EmbeddingList:
    data = []
    for index, vector in enumerate(response.predictions):
        values = [float(x) for x in vector]
        if encoding_format == "base64":
            packed = struct.pack(f"<{len(values)}f", *values)
            data.append(Embedding(index=index, embedding=base64.b64encode(packed).decode()))
        else:
            data.append(Embedding(index=index, embedding=values))
    usage = EmbeddingUsage(
        prompt_tokens=response.usage.prompt_tokens, total_tokens=response.usage.prompt_tokens
    )
    return EmbeddingList(data=data, model=model, usage=usage)
