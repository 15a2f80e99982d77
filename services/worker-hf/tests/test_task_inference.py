"""Task inference: KServe's suffix rules and messages, plus embeddings for
sentence-transformers folders and bare encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import BertConfig, GPT2Config, PretrainedConfig, T5Config

from infergate_common.errors import StartupError
from infergate_common.worker_api import Task
from infergate_worker_hf.task_inference import infer_task, parse_task

SUPPORTED = (
    "sequence_classification, token_classification, fill_mask, text_generation, "
    "text2text_generation, text_embedding"
)


def config_for(architecture: str | None, cls: type[PretrainedConfig] = BertConfig) -> PretrainedConfig:
    return cls(architectures=[architecture] if architecture else None)


@pytest.mark.parametrize(
    ("architecture", "task"),
    [
        ("BertForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
        ("DistilBertForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
        ("BertForTokenClassification", Task.TOKEN_CLASSIFICATION),
        ("BertForMaskedLM", Task.FILL_MASK),
        ("RobertaForMaskedLM", Task.FILL_MASK),
        ("LlamaForCausalLM", Task.TEXT_GENERATION),
        # Beyond KServe (which cannot infer it): transformers' causal LM map.
        ("GPT2LMHeadModel", Task.TEXT_GENERATION),
        ("BertFancyHead", None),
        ("T5ForConditionalGeneration", Task.TEXT2TEXT_GENERATION),
        ("MarianMTModel", Task.TEXT2TEXT_GENERATION),
        ("EncoderDecoderModel", Task.TEXT2TEXT_GENERATION),
    ],
)
def test_suffixes_map_to_kserve_tasks(architecture: str, task: Task | None) -> None:
    config = config_for(architecture, GPT2Config if architecture.startswith("GPT2") else BertConfig)
    if task is None:
        with pytest.raises(StartupError) as raised:
            infer_task(config, None, None)
        assert raised.value.message == (
            f"Task couldn't be inferred from {architecture}. Please manually set task option."
        )
    else:
        assert infer_task(config, None, None) is task


@pytest.mark.parametrize(
    ("architecture", "kserve_task"),
    [
        ("BertForQuestionAnswering", "question_answering"),
        ("TapasForQuestionAnswering", "table_question_answering"),
        ("BertForMultipleChoice", "multiple_choice"),
    ],
)
def test_mapped_but_unsupported_task_uses_kserve_message(architecture: str, kserve_task: str) -> None:
    with pytest.raises(StartupError) as raised:
        infer_task(config_for(architecture), None, None)
    assert raised.value.message == (
        f"Task {kserve_task} is not supported. Currently supported tasks are: {SUPPORTED}."
    )


def test_first_matching_suffix_wins() -> None:
    # Tapas' own suffix comes before the generic question answering one.
    with pytest.raises(StartupError, match="Task table_question_answering is not supported"):
        infer_task(config_for("TapasForQuestionAnswering"), None, None)


def test_unknown_architecture_message() -> None:
    with pytest.raises(StartupError) as raised:
        infer_task(config_for("FancyNewThing"), None, None)
    assert raised.value.message == (
        "Task couldn't be inferred from FancyNewThing. Please manually set task option."
    )


def test_config_without_architectures_is_a_clear_error() -> None:
    with pytest.raises(StartupError, match="Please manually set task option"):
        infer_task(config_for(None), None, None)


@pytest.mark.parametrize("architecture", ["BertModel", "RobertaModel", "DistilBertModel"])
def test_bare_encoders_serve_embeddings(architecture: str) -> None:
    model_type = {"BertModel": "bert", "RobertaModel": "roberta", "DistilBertModel": "distilbert"}
    config = PretrainedConfig(architectures=[architecture])
    config.model_type = model_type[architecture]  # type: ignore[misc]
    assert infer_task(config, None, None) is Task.TEXT_EMBEDDING


def test_t5_encoder_is_an_embedding_model() -> None:
    config = T5Config(architectures=["T5EncoderModel"], is_encoder_decoder=False)
    assert infer_task(config, None, None) is Task.TEXT_EMBEDDING


def test_bare_decoder_is_not_an_embedding_model() -> None:
    config = GPT2Config(architectures=["GPT2Model"])
    with pytest.raises(StartupError, match="Task couldn't be inferred from GPT2Model"):
        infer_task(config, None, None)


@pytest.mark.parametrize("marker", ["modules.json", "sentence_bert_config.json"])
def test_sentence_transformers_folder_serves_embeddings(tmp_path: Path, marker: str) -> None:
    (tmp_path / marker).write_text(json.dumps([] if marker == "modules.json" else {}))
    # Even a head architecture: sentence-transformers would pool it.
    assert infer_task(config_for("BertForMaskedLM"), tmp_path, None) is Task.TEXT_EMBEDDING


def test_explicit_task_wins_over_inference() -> None:
    config = config_for("BertForMaskedLM")
    assert infer_task(config, None, Task.TEXT_EMBEDDING) is Task.TEXT_EMBEDDING
    assert infer_task(config_for("FancyNewThing"), None, "fill-mask") is Task.FILL_MASK


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("sequence_classification", Task.SEQUENCE_CLASSIFICATION),
        ("Token-Classification", Task.TOKEN_CLASSIFICATION),
        ("text_classification", Task.SEQUENCE_CLASSIFICATION),
        ("embedding", Task.TEXT_EMBEDDING),
        ("text2text-generation", Task.TEXT2TEXT_GENERATION),
    ],
)
def test_task_names(name: str, task: Task) -> None:
    assert parse_task(name) is task


def test_unknown_task_name_uses_kserve_message() -> None:
    with pytest.raises(StartupError) as raised:
        parse_task("question_answering")
    assert raised.value.message == (
        f"Task question_answering is not supported. Currently supported tasks are: {SUPPORTED}."
    )


def test_built_test_models_infer_their_tasks(models: Path) -> None:
    from transformers import AutoConfig

    expected = {
        "tiny-bert-classifier": Task.SEQUENCE_CLASSIFICATION,
        "tiny-bert-ner": Task.TOKEN_CLASSIFICATION,
        "tiny-bert-mlm": Task.FILL_MASK,
        "tiny-bert-encoder": Task.TEXT_EMBEDDING,
        "tiny-st": Task.TEXT_EMBEDDING,
    }
    for name, task in expected.items():
        assert infer_task(AutoConfig.from_pretrained(models / name), models / name, None) is task, name
