"""The request side: prompts, sampling parameters, the context check and
the logprobs mapping (no engine needed)."""

from __future__ import annotations

from typing import Any

import pytest

from infergate_common.errors import InvalidRequest
from infergate_common.worker_api import ChatMessage, SamplingParams
from infergate_worker_vllm.logprobs import LogprobMapper
from infergate_worker_vllm.prompts import render_prompt
from infergate_worker_vllm.sampling import completion_budget, finish_reason, to_vllm

pytestmark = pytest.mark.vllm


def test_unset_max_tokens_takes_what_the_context_leaves() -> None:
    assert completion_budget(SamplingParams(), prompt_tokens=10, max_model_len=64) == 54
    assert completion_budget(SamplingParams(max_tokens=5), prompt_tokens=10, max_model_len=64) == 5


def test_a_request_over_the_context_is_a_clear_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        completion_budget(SamplingParams(max_tokens=60), prompt_tokens=10, max_model_len=64)
    assert caught.value.status == 400
    assert "maximum context length is 64 tokens" in caught.value.message
    assert "70 tokens (10 in the prompt, 60 for the completion)" in caught.value.message
    with pytest.raises(InvalidRequest):
        completion_budget(SamplingParams(), prompt_tokens=64, max_model_len=64)


def test_sampling_params_map_to_vllm() -> None:
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        n=3, temperature=0.7, top_p=0.9, top_k=-1, seed=5, stop=["\n\n"], presence_penalty=0.5,
        frequency_penalty=-0.5, logprobs=2, echo=True, ignore_eos=True,
    )  # fmt: skip
    sampling = to_vllm(params, max_tokens=12, max_logprobs=20)
    assert (sampling.n, sampling.temperature, sampling.top_p, sampling.top_k) == (3, 0.7, 0.9, 0)
    assert (sampling.seed, sampling.stop, sampling.max_tokens) == (5, ["\n\n"], 12)
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -0.5)
    assert (sampling.logprobs, sampling.prompt_logprobs, sampling.ignore_eos) == (2, 2, True)
    assert sampling.include_stop_str_in_output is False
    assert sampling.output_kind is RequestOutputKind.DELTA


def test_logit_bias_maps_to_vllm() -> None:
    sampling = to_vllm(SamplingParams(logit_bias={7: 100.0, 3: -2.5}), max_tokens=4, max_logprobs=20)
    assert sampling.logit_bias == {7: 100.0, 3: -2.5}
    assert to_vllm(SamplingParams(), 4, 20).logit_bias is None


def test_prompt_logprobs_only_with_echo() -> None:
    assert to_vllm(SamplingParams(logprobs=1), 4, 20).prompt_logprobs is None
    assert to_vllm(SamplingParams(echo=True), 4, 20).prompt_logprobs is None


def test_vllm_validation_errors_are_400() -> None:
    with pytest.raises(InvalidRequest):
        to_vllm(SamplingParams(n=2, temperature=0.0), 4, 20)
    with pytest.raises(InvalidRequest, match="logprobs"):
        to_vllm(SamplingParams(logprobs=8), 4, 5)


def test_finish_reasons() -> None:
    assert [finish_reason(r) for r in ("stop", "length", "abort", "error", None)] == [
        "stop", "length", "abort", "error", None,
    ]  # fmt: skip


def test_text_prompt_with_offsets(tiny_llama_tokenizer: Any) -> None:
    rendered = render_prompt(tiny_llama_tokenizer, "hello world", None, "m", want_offsets=True)
    assert rendered.token_ids == tiny_llama_tokenizer("hello world")["input_ids"]
    assert rendered.text == "hello world"
    assert rendered.offsets is not None and len(rendered.offsets) == len(rendered.token_ids)
    assert rendered.offsets == sorted(rendered.offsets)


def test_chat_prompt_uses_the_template_with_the_generation_prompt(tiny_llama_tokenizer: Any) -> None:
    messages = [ChatMessage(role="user", content=[{"type": "text", "text": "hi there"}])]
    rendered = render_prompt(tiny_llama_tokenizer, None, messages, "m")
    expected = tiny_llama_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.text == expected
    assert rendered.token_ids == tiny_llama_tokenizer(expected, add_special_tokens=False)["input_ids"]


def test_no_chat_template_is_a_400(test_models: Any) -> None:
    from transformers import AutoTokenizer

    gpt2 = AutoTokenizer.from_pretrained(test_models / "tiny-gpt2")
    with pytest.raises(InvalidRequest, match="no chat template"):
        render_prompt(gpt2, None, [ChatMessage(role="user", content="hi")], "gpt2")


def test_token_prompts_are_checked(tiny_llama_tokenizer: Any) -> None:
    assert render_prompt(tiny_llama_tokenizer, [5, 6, 7], None, "m").token_ids == [5, 6, 7]
    with pytest.raises(InvalidRequest, match="out of range"):
        render_prompt(tiny_llama_tokenizer, [5, 10**6], None, "m")


def test_logprobs_mapping_follows_rank_and_offsets() -> None:
    from vllm.logprobs import Logprob

    mapper = LogprobMapper(top=2, decode=lambda token_id: f"<{token_id}>", start_offset=4)
    positions: list[dict[int, Any] | None] = [
        None,
        {
            7: Logprob(logprob=-3.0, rank=4, decoded_token="ab"),
            8: Logprob(logprob=-0.1, rank=1, decoded_token="c"),
            9: Logprob(logprob=float("-inf"), rank=2, decoded_token="d"),
        },
    ]
    first, second = mapper.many([3, 7], positions)
    assert (first.token, first.logprob, first.text_offset) == ("<3>", None, 4)
    assert (second.token, second.logprob, second.text_offset) == ("ab", -3.0, 7)
    assert [(t.token, t.logprob) for t in second.top] == [("c", -0.1), ("d", -9999.0)]
    assert second.bytes == [97, 98]
    assert mapper.next_offset == 9
