"""Which task a model serves: KServe's rules (architecture suffix, first
match wins, same messages), plus embeddings for sentence-transformers folders
and bare encoders, which KServe only serves with an explicit ``--task``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from infergate_common.errors import StartupError
from infergate_common.worker_api import Task

log = logging.getLogger(__name__)

# KServe's task names that worker-hf does not serve.
_UNSUPPORTED = ("table_question_answering", "question_answering", "multiple_choice")

# Architecture suffix -> task, in KServe's order; the first match wins.
ARCHITECTURE_SUFFIXES: tuple[tuple[str, Task | str], ...] = (
    ("TapasForQuestionAnswering", "table_question_answering"),
    ("ForQuestionAnswering", "question_answering"),
    ("ForTokenClassification", Task.TOKEN_CLASSIFICATION),
    ("ForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
    ("ForMultipleChoice", "multiple_choice"),
    ("ForMaskedLM", Task.FILL_MASK),
    ("ForCausalLM", Task.TEXT_GENERATION),
    ("ForConditionalGeneration", Task.TEXT2TEXT_GENERATION),
    ("MTModel", Task.TEXT2TEXT_GENERATION),
    ("EncoderDecoderModel", Task.TEXT2TEXT_GENERATION),
)

SUPPORTED_TASKS: tuple[Task, ...] = (
    Task.SEQUENCE_CLASSIFICATION,
    Task.TOKEN_CLASSIFICATION,
    Task.FILL_MASK,
    Task.TEXT_GENERATION,
    Task.TEXT2TEXT_GENERATION,
    Task.TEXT_EMBEDDING,
)

# Other names people pass for a task (pipeline names, OpenAI's wording).
TASK_ALIASES: dict[str, Task] = {
    "text_classification": Task.SEQUENCE_CLASSIFICATION,
    "ner": Task.TOKEN_CLASSIFICATION,
    "embedding": Task.TEXT_EMBEDDING,
    "embeddings": Task.TEXT_EMBEDDING,
    "feature_extraction": Task.TEXT_EMBEDDING,
    "sentence_similarity": Task.TEXT_EMBEDDING,
}

SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json")


def unsupported_task_message(task: str) -> str:
    supported = ", ".join(t.value for t in SUPPORTED_TASKS)
    return f"Task {task} is not supported. Currently supported tasks are: {supported}."


def parse_task(name: str | Task) -> Task:
    """A task given by name (case and dashes do not matter)."""
    if isinstance(name, Task):
        return name
    key = name.strip().lower().replace("-", "_")
    try:
        return Task(key)
    except ValueError:
        pass
    if key in TASK_ALIASES:
        return TASK_ALIASES[key]
    raise StartupError(unsupported_task_message(key))


def is_sentence_transformers_folder(model_dir: str | Path | None) -> bool:
    if model_dir is None:
        return False
    folder = Path(model_dir)
    return folder.is_dir() and any((folder / name).is_file() for name in SENTENCE_TRANSFORMERS_FILES)


def sentence_transformers_max_seq_length(model_dir: str | Path | None) -> int | None:
    """The ``max_seq_length`` a sentence-transformers folder declares."""
    if model_dir is None:
        return None
    path = Path(model_dir) / "sentence_bert_config.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("max_seq_length")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def is_bare_encoder(config: Any, architecture: str) -> bool:
    """A base encoder without a head (``BertModel``, ``T5EncoderModel``):
    its hidden states are what embeddings pool."""
    from transformers.models.auto import modeling_auto

    if getattr(config, "is_encoder_decoder", False):
        return False
    text_encoders = set(modeling_auto.MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES.values())
    if architecture in text_encoders:
        return True
    model_type = getattr(config, "model_type", None)
    base = modeling_auto.MODEL_MAPPING_NAMES.get(model_type) if model_type else None
    base_names = base if isinstance(base, tuple) else (base,)
    return architecture in base_names and model_type in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def task_from_architecture(architecture: str) -> Task | None:
    """KServe's suffix rule; None when no suffix matches. A matched task that
    is not served is a StartupError with KServe's message."""
    for suffix, task in ARCHITECTURE_SUFFIXES:
        if architecture.endswith(suffix):
            if isinstance(task, Task):
                return task
            raise StartupError(unsupported_task_message(task))
    return None


def task_from_transformers_maps(architecture: str) -> Task | None:
    """Generative heads whose names lack KServe's suffixes (``GPT2LMHeadModel``,
    ``BloomForCausalLM``'s older siblings): transformers' own auto maps know
    them. Checked after KServe's rule, so KServe's answers never change."""
    from transformers.models.auto import modeling_auto

    maps = (
        (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, Task.TEXT_GENERATION),
        (modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, Task.TEXT2TEXT_GENERATION),
    )
    for names, task in maps:
        for value in names.values():
            if architecture in (value if isinstance(value, tuple) else (value,)):
                return task
    return None


def infer_task(config: Any, model_dir: str | Path | None, explicit_task: Task | str | None) -> Task:
    """The task to serve: the explicit one, else inferred from the config."""
    architectures = getattr(config, "architectures", None) or []
    architecture = architectures[0] if architectures else None
    if explicit_task is not None:
        task = parse_task(explicit_task)
        inferred = _infer_quietly(config, model_dir, architecture)
        if inferred is not None and inferred != task:
            log.warning(
                "task set explicitly differs from the inferred one",
                extra={"task": task.value, "inferred_task": inferred.value},
            )
        return task
    # A sentence-transformers folder is an embedding model whatever head its
    # config names: sentence-transformers itself would pool it.
    if is_sentence_transformers_folder(model_dir):
        return Task.TEXT_EMBEDDING
    if architecture is None:
        raise StartupError(
            "Task couldn't be inferred from a config without architectures. Please manually set task option."
        )
    task = task_from_architecture(architecture)
    if task is not None:
        return task
    if is_bare_encoder(config, architecture):
        return Task.TEXT_EMBEDDING
    task = task_from_transformers_maps(architecture)
    if task is not None:
        return task
    raise StartupError(f"Task couldn't be inferred from {architecture}. Please manually set task option.")


def _infer_quietly(config: Any, model_dir: str | Path | None, architecture: str | None) -> Task | None:
    try:
        return infer_task(config, model_dir, None)
    except StartupError:
        return None
