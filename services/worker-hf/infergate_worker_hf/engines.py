"""Which engine class serves which task: a table."""

from __future__ import annotations

import importlib

from infergate_common.worker_api import Task

from .base_engine import HFEngine
from .encoders import (
    EmbeddingEngine,
    FillMaskEngine,
    SequenceClassificationEngine,
    TokenClassificationEngine,
)

ENGINES: dict[Task, type[HFEngine]] = {
    Task.SEQUENCE_CLASSIFICATION: SequenceClassificationEngine,
    Task.TOKEN_CLASSIFICATION: TokenClassificationEngine,
    Task.FILL_MASK: FillMaskEngine,
    Task.TEXT_EMBEDDING: EmbeddingEngine,
}


def _generation_engine() -> type[HFEngine] | None:
    # The generation package may be absent from a trimmed build; a broken
    # one must still fail loudly.
    try:
        module = importlib.import_module("infergate_worker_hf.generation.engine")
    except ModuleNotFoundError as exc:
        if exc.name in ("infergate_worker_hf.generation", "infergate_worker_hf.generation.engine"):
            return None
        raise
    engine: type[HFEngine] = module.GenerationEngine
    return engine


_generation = _generation_engine()
if _generation is not None:
    ENGINES[Task.TEXT_GENERATION] = _generation
    ENGINES[Task.TEXT2TEXT_GENERATION] = _generation
