from __future__ import annotations

import pytest

from infergate_common.errors import StartupError
from infergate_common.worker_api import Backend, Task
from infergate_worker_vllm.backend_choice import choose_backend, vllm_supported_architectures

pytestmark = pytest.mark.vllm


def test_vllm_registry_is_read() -> None:
    supported = vllm_supported_architectures()
    assert not isinstance(supported, str), supported
    assert "LlamaForCausalLM" in supported


def test_auto_serves_a_supported_decoder_on_vllm() -> None:
    choice = choose_backend("auto", ["LlamaForCausalLM"], Task.TEXT_GENERATION)
    assert choice.backend is Backend.VLLM
    assert "LlamaForCausalLM" in choice.reason


def test_auto_falls_back_for_a_task_vllm_does_not_serve_here() -> None:
    choice = choose_backend("auto", ["BertForSequenceClassification"], Task.SEQUENCE_CLASSIFICATION)
    assert choice.backend is Backend.HUGGINGFACE
    assert "sequence_classification" in choice.reason


def test_auto_falls_back_when_any_architecture_is_unknown_to_vllm() -> None:
    choice = choose_backend("auto", ["LlamaForCausalLM", "MadeUpForCausalLM"], Task.TEXT_GENERATION)
    assert choice.backend is Backend.HUGGINGFACE
    assert "MadeUpForCausalLM" in choice.reason
    assert "LlamaForCausalLM," not in choice.reason


def test_huggingface_is_always_transformers() -> None:
    choice = choose_backend("huggingface", ["LlamaForCausalLM"], Task.TEXT_GENERATION)
    assert choice.backend is Backend.HUGGINGFACE
    assert "huggingface" in choice.reason


def test_vllm_asked_and_supported() -> None:
    assert choose_backend("vllm", ["LlamaForCausalLM"], Task.TEXT_GENERATION).backend is Backend.VLLM


@pytest.mark.parametrize(
    ("architectures", "task", "named"),
    [
        (["BertForSequenceClassification"], Task.SEQUENCE_CLASSIFICATION, "BertForSequenceClassification"),
        (["MadeUpForCausalLM"], Task.TEXT_GENERATION, "MadeUpForCausalLM"),
    ],
)
def test_vllm_asked_but_unsupported_is_a_startup_error(
    architectures: list[str], task: Task, named: str
) -> None:
    with pytest.raises(StartupError) as caught:
        choose_backend("vllm", architectures, task)
    assert named in caught.value.message
    assert "\n" not in caught.value.message
