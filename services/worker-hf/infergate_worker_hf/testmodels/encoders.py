"""Small BERT models for the encoder tasks, with a WordPiece tokenizer
trained on an in-code corpus.

``minilm-classifier`` (``bench=True``) has MiniLM's shape (6 layers, hidden
384, 12 heads) so the forward pass costs what a real one does, for the
batching benchmark.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CORPUS = [
    "Hello, my dog is cute.",
    "The capital of France is Paris.",
    "The capital of Germany is Berlin.",
    "Paris is a city in France and Berlin is a city in Germany.",
    "A man is eating food. A man is eating a piece of bread.",
    "The stock market fell sharply today as investors sold shares.",
    "Interest rates and the stock market moved together this week.",
    "She likes to read books in the garden when the weather is nice.",
    "The quick brown fox jumps over the lazy dog.",
    "John Smith lives in London and works for a bank in New York.",
    "Mary went to Rome with her friend Anna last summer.",
    "This movie was great, I loved it. This film was terrible, I hated it.",
    "The food at the restaurant was good but the service was slow.",
    "We are making words and sentences for a small test model.",
    "Translate from English to German: we are making words.",
    "Machine learning models turn text into numbers and numbers into answers.",
    "The weather today is sunny with a light wind from the west.",
    "Cats and dogs are animals that people keep at home as pets.",
    "Music, sport, science, art, history, travel, family, friends and work.",
    "one two three four five six seven eight nine ten hundred thousand",
]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SENTIMENT_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TINY_CONTEXT = 128


def build_tokenizer(vocab_size: int = 400) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizer

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    backend.train_from_iterator(CORPUS, trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizer(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=True,
        model_max_length=TINY_CONTEXT,
    )


def _bert_config(tokenizer: Any, *, large: bool = False, **extra: Any) -> Any:
    from transformers import BertConfig

    shape: dict[str, Any] = (
        {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
        if large
        else {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    )
    return BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=512 if large else TINY_CONTEXT,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
        **extra,
    )


def _labelled(labels: dict[int, str]) -> dict[str, Any]:
    return {
        "num_labels": len(labels),
        "id2label": dict(labels),
        "label2id": {v: k for k, v in labels.items()},
    }


def _save(folder: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temporary folder and rename it into place, so a folder
    that exists is complete (and concurrent builds do not mix)."""
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _model_builder(model_cls_name: str, config_kwargs: dict[str, Any], *, large: bool = False, seed: int = 0):
    def build(path: Path) -> None:
        import torch
        import transformers

        torch.manual_seed(seed)
        tokenizer = build_tokenizer()
        config = _bert_config(tokenizer, large=large, **config_kwargs)
        model = getattr(transformers, model_cls_name)(config)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    return build


def _sentence_transformers_builder(path: Path) -> None:
    _model_builder("BertModel", {}, seed=4)(path)
    (path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ],
            indent=2,
        )
    )
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 64, "do_lower_case": False})
    )
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    (path / "2_Normalize").mkdir()


def build_encoders(out: Path, bench: bool = False) -> list[Path]:
    """Build the encoder test models under ``out`` (skipping those that exist)."""
    out = Path(out)
    builders: dict[str, Callable[[Path], None]] = {
        "tiny-bert-classifier": _model_builder(
            "BertForSequenceClassification", _labelled(SENTIMENT_LABELS), seed=1
        ),
        "tiny-bert-ner": _model_builder("BertForTokenClassification", _labelled(NER_LABELS), seed=2),
        "tiny-bert-mlm": _model_builder("BertForMaskedLM", {}, seed=3),
        "tiny-bert-encoder": _model_builder("BertModel", {}, seed=5),
        "tiny-st": _sentence_transformers_builder,
    }
    if bench:
        builders["minilm-classifier"] = _model_builder(
            "BertForSequenceClassification", _labelled(SENTIMENT_LABELS), large=True, seed=6
        )
    return [_save(out / name, build) for name, build in builders.items()]
