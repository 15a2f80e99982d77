"""The worker API's sampling parameters as vLLM's, and the context check.
``logit_bias`` goes to vLLM's ``SamplingParams.logit_bias`` once the engine
has checked it against the request limits and the model's vocabulary."""

from __future__ import annotations

from typing import Any

from infergate_common.errors import InvalidRequest
from infergate_common.worker_api import FinishReason
from infergate_common.worker_api import SamplingParams as WorkerSampling

# vLLM's finish reasons that are not the worker API's.
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "error": "error",
    "repetition": "stop",
}


def finish_reason(vllm_reason: str | None) -> FinishReason | None:
    if vllm_reason is None:
        return None
    return _FINISH_REASONS.get(str(vllm_reason), "stop")


def completion_budget(params: WorkerSampling, prompt_tokens: int, max_model_len: int) -> int:
    """``max_tokens``, or what the context leaves when it is unset; a request
    the context cannot hold is a 400 (vLLM's own server's wording)."""
    if prompt_tokens >= max_model_len:
        raise InvalidRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has {prompt_tokens} tokens, which leaves no room for a completion. "
            "Please reduce the length of the prompt.",
            param="prompt",
            code="context_length_exceeded",
        )
    if params.max_tokens is None:
        return max_model_len - prompt_tokens
    if prompt_tokens + params.max_tokens > max_model_len:
        raise InvalidRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + params.max_tokens} tokens ({prompt_tokens} in the "
            f"prompt, {params.max_tokens} for the completion). Please reduce the length of "
            "the prompt or the completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return params.max_tokens


def to_vllm(params: WorkerSampling, max_tokens: int, max_logprobs: int) -> Any:
    """vLLM ``SamplingParams`` streaming deltas; echo with logprobs also asks
    for the prompt's logprobs (KServe issue 3739 broke exactly there)."""
    from vllm.exceptions import VLLMError
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    if params.logprobs is not None and max_logprobs >= 0 and params.logprobs > max_logprobs:
        raise InvalidRequest(f"logprobs must be at most {max_logprobs} on this model", param="logprobs")
    prompt_logprobs = params.logprobs if params.echo and params.logprobs is not None else None
    try:
        return SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=max(params.top_k, 0),
            seed=params.seed,
            stop=list(params.stop) or None,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            max_tokens=max_tokens,
            logprobs=params.logprobs,
            prompt_logprobs=prompt_logprobs,
            ignore_eos=params.ignore_eos,
            logit_bias=dict(params.logit_bias) if params.logit_bias else None,
            include_stop_str_in_output=False,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )
    except (ValueError, VLLMError) as exc:
        raise InvalidRequest(str(exc)) from exc
