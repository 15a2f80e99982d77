"""Each encoder task through a real worker-hf process over HTTP, checked
against the same model run in the test process with plain transformers."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_worker_process import HFWorker
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

StartWorker = Callable[..., HFWorker]

torch.set_num_threads(1)

SENTENCES = ["Hello, my dog is cute.", "The capital of France is Paris and Berlin is in Germany."]


@cache
def reference(model_dir: Path, kind: str) -> tuple[Any, Any]:
    classes = {
        "sequence": AutoModelForSequenceClassification,
        "token": AutoModelForTokenClassification,
        "mask": AutoModelForMaskedLM,
        "base": AutoModel,
    }
    model = classes[kind].from_pretrained(model_dir).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def reference_outputs(model_dir: Path, kind: str, inputs: list[str]) -> tuple[Any, Any]:
    model, tokenizer = reference(model_dir, kind)
    batch = tokenizer(inputs, padding=True, truncation=True, return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        return model(**batch), batch


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def error_of(response: Any, status: int = 400) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["error"]["message"])


# ------------------------------------------------- sequence classification


@pytest.fixture(scope="module")
def classifier(hf_worker: StartWorker, models: Path) -> HFWorker:
    return hf_worker(models / "tiny-bert-classifier")


def test_classification_indexes_by_default(classifier: HFWorker) -> None:
    body = ok(classifier.encode(SENTENCES))
    outputs, _ = reference_outputs(classifier.model_dir, "sequence", SENTENCES)
    assert body["task"] == "sequence_classification"
    assert body["predictions"] == outputs.logits.argmax(-1).tolist()
    assert body["datatype"] == "INT64" and body["shape"] == [2]


def test_classification_raw_logits_match_transformers(classifier: HFWorker) -> None:
    body = ok(classifier.encode(SENTENCES, return_raw_logits=True))
    outputs, _ = reference_outputs(classifier.model_dir, "sequence", SENTENCES)
    assert body["datatype"] == "FP32" and body["shape"] == [2, 3]
    assert torch.allclose(torch.tensor(body["predictions"]), outputs.logits, atol=1e-5)


def test_classification_probabilities_are_a_softmax_map(classifier: HFWorker) -> None:
    body = ok(classifier.encode(SENTENCES, return_probabilities=True))
    outputs, _ = reference_outputs(classifier.model_dir, "sequence", SENTENCES)
    probs = torch.softmax(outputs.logits, -1)
    assert body["datatype"] == "BYTES" and body["shape"] == [2]
    for row, expected in zip(body["predictions"], probs, strict=True):
        assert list(row) == ["0", "1", "2"]
        assert [row[k] for k in ("0", "1", "2")] == pytest.approx(expected.tolist(), abs=1e-4)
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-3)


def test_classification_label_names(classifier: HFWorker) -> None:
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    indexes = ok(classifier.encode(SENTENCES))["predictions"]
    body = ok(classifier.encode(SENTENCES, return_labels=True))
    assert body["predictions"] == [labels[i] for i in indexes]
    assert body["datatype"] == "BYTES"
    probs = ok(classifier.encode(SENTENCES, return_labels=True, return_probabilities=True))
    assert set(probs["predictions"][0]) == {"negative", "neutral", "positive"}


def test_probabilities_and_raw_logits_are_exclusive(classifier: HFWorker) -> None:
    message = error_of(classifier.encode(SENTENCES, return_probabilities=True, return_raw_logits=True))
    assert "mutually exclusive" in message


def test_usage_counts_real_tokens(classifier: HFWorker) -> None:
    body = ok(classifier.encode(SENTENCES))
    counts = [ok(classifier.post("/tokenize", {"prompt": s}))["count"] for s in SENTENCES]
    total = sum(counts)
    assert body["usage"] == {"prompt_tokens": total, "completion_tokens": 0, "total_tokens": total}


def test_long_inputs_are_truncated_to_the_context(classifier: HFWorker) -> None:
    context = classifier.info()["max_model_len"]
    body = ok(classifier.encode(["dog " * 1000, "cat"]))
    assert body["usage"]["prompt_tokens"] == context + 3  # [CLS] cat [SEP]


def test_bad_requests_are_400s_and_the_worker_keeps_serving(classifier: HFWorker) -> None:
    assert classifier.post("/encode", {"request_id": "x", "inputs": []}).status_code == 400
    assert classifier.post("/encode", {"request_id": "x", "inputs": "not a list"}).status_code == 400
    assert classifier.post("/encode", {"request_id": "x"}).status_code == 400
    assert classifier.encode(["a"], dimensions=4).status_code == 400
    assert classifier.get("/readyz").status_code == 200
    ok(classifier.encode(SENTENCES))


def test_startup_flags_are_defaults_that_requests_override(hf_worker: StartWorker, models: Path) -> None:
    worker = hf_worker(models / "tiny-bert-classifier", "--return_probabilities", "--return_labels")
    assert isinstance(ok(worker.encode(SENTENCES))["predictions"][0], dict)
    plain = ok(worker.encode(SENTENCES, return_probabilities=False, return_labels=False))
    assert all(isinstance(p, int) for p in plain["predictions"])
    # Asking for raw logits turns the start-up probabilities off.
    logits = ok(worker.encode(SENTENCES, return_raw_logits=True))
    assert logits["datatype"] == "FP32"


# --------------------------------------------------- token classification


@pytest.fixture(scope="module")
def ner(hf_worker: StartWorker, models: Path) -> HFWorker:
    return hf_worker(models / "tiny-bert-ner")


def test_token_classification_kserve_nested_shape(ner: HFWorker) -> None:
    body = ok(ner.encode(SENTENCES))
    outputs, batch = reference_outputs(ner.model_dir, "token", SENTENCES)
    length = batch["input_ids"].shape[1]
    assert body["task"] == "token_classification"
    assert body["datatype"] == "INT64" and body["shape"] == [2, 1, length]
    # Special-token and padding positions included, as KServe returns them.
    assert body["predictions"] == [[row] for row in outputs.logits.argmax(-1).tolist()]


def test_token_classification_labels_probabilities_and_logits(ner: HFWorker) -> None:
    labels = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    indexes = ok(ner.encode(SENTENCES))["predictions"]
    named = ok(ner.encode(SENTENCES, return_labels=True))["predictions"]
    assert named == [[[labels[i] for i in row[0]]] for row in indexes]
    probs = ok(ner.encode(SENTENCES, return_probabilities=True))
    length = len(indexes[0][0])
    assert probs["shape"] == [2, length]
    assert all(sum(position.values()) == pytest.approx(1.0, abs=1e-3) for position in probs["predictions"][0])
    logits = ok(ner.encode(SENTENCES, return_raw_logits=True))
    assert logits["shape"] == [2, length, 5]


def test_offsets_mapping(ner: HFWorker) -> None:
    body = ok(ner.encode(SENTENCES, return_offsets_mapping=True))
    offsets = body["offsets_mapping"]
    assert len(offsets) == 2 and len(offsets[0]) == len(offsets[1]) == body["shape"][2]
    first = SENTENCES[0]
    assert offsets[0][0] == [0, 0]  # [CLS]
    assert first[offsets[0][1][0] : offsets[0][1][1]].lower() == "hello"
    assert offsets[0][-1] == [0, 0]  # padding
    assert ok(ner.encode(SENTENCES))["offsets_mapping"] is None


# -------------------------------------------------------------- fill mask


@pytest.fixture(scope="module")
def mlm(hf_worker: StartWorker, models: Path) -> HFWorker:
    return hf_worker(models / "tiny-bert-mlm")


def test_fill_mask_decodes_the_argmax_token(mlm: HFWorker) -> None:
    inputs = ["The capital of France is [MASK].", "The capital of [MASK] is [MASK]."]
    body = ok(mlm.encode(inputs))
    model, tokenizer = reference(mlm.model_dir, "mask")
    expected: list[Any] = []
    for text in inputs:
        batch = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**batch).logits[0]
        positions = (batch["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
        words = [tokenizer.decode([int(logits[p].argmax())]).strip() for p in positions]
        expected.append(words[0] if len(words) == 1 else words)
    assert body["predictions"] == expected
    assert isinstance(body["predictions"][1], list) and len(body["predictions"][1]) == 2
    assert body["datatype"] == "BYTES" and body["shape"] == [2]


def _mask_logits(mlm: HFWorker, text: str) -> torch.Tensor:
    model, tokenizer = reference(mlm.model_dir, "mask")
    batch = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits[0]
    position = int((batch["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()[0])
    return logits[position]


def test_fill_mask_probabilities_are_the_top_k_tokens(mlm: HFWorker) -> None:
    text = "The capital of France is [MASK]."
    body = ok(mlm.encode([text], return_probabilities=True))
    (masks,) = body["predictions"]
    assert len(masks) == 1
    # --fill_mask_top_k's default: five tokens, most likely first, never the vocabulary.
    probs, ids = _mask_logits(mlm, text).softmax(-1).topk(5)
    assert list(masks[0]) == [str(i) for i in ids.tolist()]
    assert list(masks[0].values()) == pytest.approx(probs.tolist(), abs=1e-4)
    assert body["datatype"] == "BYTES" and body["shape"] == [1]


def test_fill_mask_raw_logits_and_a_request_top_k(mlm: HFWorker) -> None:
    text = "The capital of France is [MASK]."
    (masks,) = ok(mlm.encode([text], return_raw_logits=True, top_k=3))["predictions"]
    values, ids = _mask_logits(mlm, text).topk(3)
    assert list(masks[0]) == [str(i) for i in ids.tolist()]
    assert list(masks[0].values()) == pytest.approx(values.tolist(), abs=1e-4)


def test_fill_mask_top_k_past_its_limit_is_a_400(mlm: HFWorker) -> None:
    message = error_of(mlm.encode(["The capital of France is [MASK]."], return_probabilities=True, top_k=101))
    assert "max_fill_mask_top_k" in message


def test_fill_mask_without_mask_is_a_clear_400(mlm: HFWorker) -> None:
    message = error_of(mlm.encode(["The capital of France is [MASK].", "no mask here"]))
    assert "input 1 has no [MASK] token" in message
    assert mlm.get("/readyz").status_code == 200


# ------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def sentence_transformer(hf_worker: StartWorker, models: Path) -> HFWorker:
    return hf_worker(models / "tiny-st")


@pytest.fixture(scope="module")
def bare_encoder(hf_worker: StartWorker, models: Path) -> HFWorker:
    return hf_worker(models / "tiny-bert-encoder")


def mean_pooled(model_dir: Path, inputs: list[str]) -> torch.Tensor:
    outputs, batch = reference_outputs(model_dir, "base", inputs)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (outputs.last_hidden_state * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1)


@pytest.mark.parametrize("which", ["sentence_transformer", "bare_encoder"])
def test_embeddings_are_mean_pooled_and_normalised(which: str, request: pytest.FixtureRequest) -> None:
    worker: HFWorker = request.getfixturevalue(which)
    info = worker.info()
    assert info["task"] == "text_embedding"
    body = ok(worker.encode(SENTENCES))
    assert body["datatype"] == "FP32" and body["shape"] == [2, 32]
    got = torch.tensor(body["predictions"])
    assert torch.allclose(got, mean_pooled(worker.model_dir, SENTENCES), atol=1e-5)
    assert all(math.isclose(float(v.norm()), 1.0, abs_tol=1e-5) for v in got)


def test_sentence_transformers_context_comes_from_its_config(sentence_transformer: HFWorker) -> None:
    assert sentence_transformer.info()["max_model_len"] == 64  # sentence_bert_config.json
    assert sentence_transformer.info()["extra"]["dimensions"] == 32


def test_embedding_dimensions_truncate_then_renormalise(bare_encoder: HFWorker) -> None:
    full = torch.tensor(ok(bare_encoder.encode(SENTENCES))["predictions"])
    body = ok(bare_encoder.encode(SENTENCES, dimensions=8))
    assert body["shape"] == [2, 8]
    cut = torch.tensor(body["predictions"])
    assert torch.allclose(cut, torch.nn.functional.normalize(full[:, :8], dim=1), atol=1e-5)
    assert "above the model's 32" in error_of(bare_encoder.encode(SENTENCES, dimensions=33))


def test_embedding_usage_is_exact(bare_encoder: HFWorker) -> None:
    body = ok(bare_encoder.encode(SENTENCES))
    _, batch = reference_outputs(bare_encoder.model_dir, "base", SENTENCES)
    assert body["usage"]["prompt_tokens"] == int(batch["attention_mask"].sum())


def test_tokenizer_flags_change_what_the_model_sees(
    hf_worker: StartWorker, models: Path, bare_encoder: HFWorker
) -> None:
    worker = hf_worker(models / "tiny-bert-encoder", "--disable_special_tokens", "--disable_lower_case")
    lowered = ok(bare_encoder.post("/tokenize", {"prompt": "HELLO dog", "add_special_tokens": False}))
    cased = ok(worker.post("/tokenize", {"prompt": "HELLO dog", "add_special_tokens": False}))
    assert lowered["tokens"] != cased["tokens"]  # "HELLO" is unknown without lower-casing
    body = ok(worker.encode(["hello dog"]))
    assert body["usage"]["prompt_tokens"] == 2  # no [CLS] / [SEP]
    # Nothing left after tokenization is a clear 400.
    assert "empty after tokenization" in error_of(worker.encode(["hello", ""]))


def test_tensor_input_names_limit_the_model_inputs(
    hf_worker: StartWorker, models: Path, bare_encoder: HFWorker
) -> None:
    worker = hf_worker(models / "tiny-bert-encoder", "--tensor_input_names", "input_ids")
    inputs = ["dog", "the capital of france is paris and berlin is in germany"]
    masked = torch.tensor(ok(bare_encoder.encode(inputs))["predictions"])
    unmasked = torch.tensor(ok(worker.encode(inputs))["predictions"])
    # Without the attention mask the short input attends to its padding.
    assert not torch.allclose(masked[0], unmasked[0], atol=1e-4)
    assert torch.allclose(masked[1], unmasked[1], atol=1e-5)
