"""The non-generative tasks: sequence classification, token classification,
fill mask and embeddings, in KServe's v1 shapes (with the v2 datatype and
shape beside them), over the cross-request micro-batcher.

Sequence classification and embeddings send their texts to the batcher,
which tokenises the whole batch in one call (truncated to the context
length); token classification and fill mask need each request's tokens
before the batch (mask positions, the request's own padded length, offsets)
and tokenise on the request's thread. The batcher pads rows of many requests
together (a batch whose lengths differ widely runs as two forward passes),
runs the forward pass in ``torch.inference_mode()`` and hands back per-row
tensors; the request thread shapes them, whole tensors at a time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from infergate_common import worker_metrics
from infergate_common.engine import MIN_DEFAULT_CAPACITY
from infergate_common.errors import InvalidRequest
from infergate_common.limits import check_count, check_encode
from infergate_common.worker_api import EncodeRequest, EncodeResponse, Usage

from .base_engine import HFEngine
from .batching import MicroBatcher
from .loading import LoadedModel

log = logging.getLogger(__name__)

PROBABILITY_DECIMALS = 4  # KServe rounds probabilities to 4 decimals.


@dataclass
class EncoderRow:
    """One tokenised input, ready to be padded into a batch."""

    input_ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int] | None
    # Positions of interest: the mask tokens (fill mask).
    positions: list[int] = field(default_factory=list)
    # Token classification: the request's own padded length, so a row's
    # output does not depend on which requests shared its batch.
    output_len: int = 0
    # Set when the batcher tokenises the row with the rest of its batch.
    text: str | None = None


# A batch is split in two forward passes (short rows, long rows) when that
# pads fewer than this share of the tokens one pass would.
SPLIT_BELOW = 0.7
SPLIT_MIN_ROWS = 8


def length_groups(lengths: list[int]) -> list[list[int]]:
    """Row indexes in one group, or two (short and long) when padding all
    rows to the longest would waste much of the forward pass."""
    n = len(lengths)
    if n < SPLIT_MIN_ROWS:
        return [list(range(n))]
    order = sorted(range(n), key=lengths.__getitem__)
    ordered = [lengths[i] for i in order]
    whole = n * ordered[-1]
    best_cost, best_k = whole, 0
    for k in range(1, n):
        cost = k * ordered[k - 1] + (n - k) * ordered[-1]
        if cost < best_cost:
            best_cost, best_k = cost, k
    if best_k == 0 or best_cost >= SPLIT_BELOW * whole:
        return [list(range(n))]
    return [order[:best_k], order[best_k:]]


@dataclass
class OutputOptions:
    """The request's output flags, resolved against the start-up flags."""

    probabilities: bool
    raw_logits: bool
    offsets_mapping: bool
    labels: bool


@dataclass
class Shaped:
    predictions: list[Any]
    datatype: str
    shape: list[int]


def resolve_options(request: EncodeRequest, settings: Any) -> OutputOptions:
    """Per-request flags override the start-up ones; asking for one of
    probabilities and raw logits turns the other off unless both are asked,
    which is a 400 (they are exclusive)."""
    probabilities, raw = request.return_probabilities, request.return_raw_logits
    if probabilities and raw:
        raise InvalidRequest(
            "return_probabilities and return_raw_logits are mutually exclusive", param="return_raw_logits"
        )
    if probabilities is None and raw is None:
        probabilities, raw = settings.return_probabilities, settings.return_raw_logits
    elif probabilities is None:
        probabilities = False if raw else settings.return_probabilities
    elif raw is None:
        raw = False if probabilities else settings.return_raw_logits
    return OutputOptions(
        probabilities=bool(probabilities),
        raw_logits=bool(raw),
        offsets_mapping=bool(
            settings.return_offsets_mapping
            if request.return_offsets_mapping is None
            else request.return_offsets_mapping
        ),
        labels=bool(settings.return_labels if request.return_labels is None else request.return_labels),
    )


class EncoderEngine(HFEngine):
    """Shared machinery of the encoder tasks; subclasses say what a row's
    result is (:meth:`extract`) and how results become predictions
    (:meth:`shape_predictions`)."""

    batcher: MicroBatcher[EncoderRow, torch.Tensor] | None = None
    # Whether rows can be tokenised on the batcher thread (nothing about a
    # request depends on its tokens before the forward pass).
    tokenize_in_batch: ClassVar[bool] = False

    # ---------------------------------------------------------- lifecycle

    def start(self, loaded: LoadedModel) -> None:
        self.batcher = MicroBatcher(
            self.run_batch,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000.0,
            model=self.settings.model_name,
        )
        self.batcher.start()
        worker_metrics.track_load(self.settings.model_name, self.batcher.load)

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()

    def default_capacity(self) -> int:
        # Two full batches of single-input requests (one running, one
        # gathering), and never fewer than the shared floor.
        return max(MIN_DEFAULT_CAPACITY, 2 * self.settings.max_batch_size)

    def healthy(self) -> tuple[bool, str]:
        if self.batcher is None or not self.batcher.alive():
            return False, "encoder batcher is not running"
        return True, ""

    def extra_info(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "batching": {
                "max_batch_size": self.settings.max_batch_size,
                "max_batch_wait_ms": self.settings.max_batch_wait_ms,
                **(self.batcher.stats.snapshot() if self.batcher else {}),
            }
        }
        labels = self.id2label()
        if labels:
            extra["labels"] = {str(k): v for k, v in sorted(labels.items())}
        return extra

    # ------------------------------------------------------------ helpers

    def id2label(self) -> dict[int, str]:
        loaded = self.loaded
        mapping = getattr(loaded.config, "id2label", None) if loaded else None
        return {int(k): str(v) for k, v in (mapping or {}).items()}

    def label_of(self, index: int, labels: dict[int, str]) -> str:
        return labels.get(index, str(index))

    def class_keys(self, width: int, options: OutputOptions, labels: dict[int, str]) -> list[str]:
        """Keys of a per-class probability map: label names or class indexes."""
        return [self.label_of(j, labels) if options.labels else str(j) for j in range(width)]

    def _tokenizer_kwargs(self, loaded: LoadedModel) -> dict[str, Any]:
        return {
            "add_special_tokens": not self.settings.disable_special_tokens,
            "truncation": True,
            "max_length": loaded.max_model_len,
            "return_token_type_ids": self.settings.return_token_type_ids,
        }

    def tokenize_inputs(self, inputs: list[str], offsets: bool) -> dict[str, Any]:
        loaded = self.require_loaded()
        kwargs = self._tokenizer_kwargs(loaded)
        if offsets:
            kwargs["return_offsets_mapping"] = True
        # Fast tokenizers refuse concurrent calls ("Already borrowed").
        with self.tokenizer_lock:
            try:
                return dict(loaded.tokenizer(inputs, **kwargs))
            except NotImplementedError as exc:
                raise InvalidRequest(f"offsets mapping needs a fast tokenizer: {exc}") from exc

    # ------------------------------------------------------ request thread

    def encode(self, request: EncodeRequest) -> EncodeResponse:
        check_encode(request, self.settings)
        options = resolve_options(request, self.settings)
        self.check_request(request, options)
        encoded: dict[str, Any] = {}
        if self.batch_tokenizes(options):
            rows = [EncoderRow([], [], None, text=text) for text in request.inputs]
        else:
            encoded = self.tokenize_inputs(request.inputs, options.offsets_mapping)
            rows = self.make_rows(request, encoded)
        assert self.batcher is not None
        results = self.batcher.submit(rows)
        shaped = self.shape_predictions(request, options, rows, results)
        offsets = None
        if options.offsets_mapping:
            length = max(len(row.input_ids) for row in rows)
            offsets = [
                [list(pair) for pair in mapping] + [[0, 0]] * (length - len(mapping))
                for mapping in encoded["offset_mapping"]
            ]
        prompt_tokens = sum(sum(row.attention_mask) for row in rows)
        return EncodeResponse(
            request_id=request.request_id,
            task=self.task,
            predictions=shaped.predictions,
            datatype=shaped.datatype,
            shape=shaped.shape,
            offsets_mapping=offsets,
            usage=Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )

    def batch_tokenizes(self, options: OutputOptions) -> bool:
        # Without special tokens an input can tokenise to nothing: that is a
        # 400 of its own request, found before the batch.
        return (
            self.tokenize_in_batch
            and not options.offsets_mapping
            and not self.settings.disable_special_tokens
        )

    def check_request(self, request: EncodeRequest, options: OutputOptions) -> None:
        if request.dimensions is not None:
            raise InvalidRequest("'dimensions' applies to embeddings only", param="dimensions")
        if request.top_k is not None:
            raise InvalidRequest("'top_k' applies to fill mask only", param="top_k")

    def make_rows(self, request: EncodeRequest, encoded: dict[str, Any]) -> list[EncoderRow]:
        ids_list: list[list[int]] = encoded["input_ids"]
        masks: list[list[int]] = encoded.get("attention_mask") or [[1] * len(ids) for ids in ids_list]
        types: list[list[int]] | None = encoded.get("token_type_ids")
        longest = max(len(ids) for ids in ids_list)
        rows = []
        for i, ids in enumerate(ids_list):
            if not ids:
                raise InvalidRequest(f"input {i} is empty after tokenization", param=f"inputs.{i}")
            rows.append(
                EncoderRow(
                    input_ids=list(ids),
                    attention_mask=list(masks[i]),
                    token_type_ids=list(types[i]) if types is not None else None,
                    output_len=longest,
                )
            )
        return rows

    def shape_predictions(
        self,
        request: EncodeRequest,
        options: OutputOptions,
        rows: list[EncoderRow],
        results: list[torch.Tensor],
    ) -> Shaped:
        raise NotImplementedError

    # ------------------------------------------------------- batch thread

    def run_batch(self, rows: list[EncoderRow]) -> list[torch.Tensor]:
        loaded = self.require_loaded()
        untokenized = [row for row in rows if row.text is not None]
        if untokenized:
            self.tokenize_rows(untokenized, loaded)
        groups = length_groups([len(row.input_ids) for row in rows])
        if len(groups) == 1:
            return self.forward(rows, loaded)
        results: list[torch.Tensor | None] = [None] * len(rows)
        for group in groups:
            for index, result in zip(group, self.forward([rows[i] for i in group], loaded), strict=True):
                results[index] = result
        return results  # type: ignore[return-value]

    def tokenize_rows(self, rows: list[EncoderRow], loaded: LoadedModel) -> None:
        """The batch's texts in one tokenizer call (the batcher thread)."""
        with self.tokenizer_lock:
            encoded = loaded.tokenizer([row.text for row in rows], **self._tokenizer_kwargs(loaded))
        types = encoded.get("token_type_ids")
        for i, row in enumerate(rows):
            row.input_ids = encoded["input_ids"][i]
            row.attention_mask = encoded["attention_mask"][i]
            row.token_type_ids = types[i] if types is not None else None
            row.output_len = len(row.input_ids)
            row.text = None

    def forward(self, rows: list[EncoderRow], loaded: LoadedModel) -> list[torch.Tensor]:
        inputs, mask, offsets = self.pad(rows, loaded)
        with torch.inference_mode():
            outputs = loaded.model(**inputs, return_dict=True)
            return self.extract(outputs, mask, rows, offsets)

    def pad(
        self, rows: list[EncoderRow], loaded: LoadedModel
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]:
        """Pad rows of many requests into one batch on the model's device.
        Returns the model's inputs (only ``--tensor_input_names`` when set),
        the attention mask (pooling needs it even when the model is not
        given it) and each row's start offset (left padding). The padded
        rows are built as lists and become tensors in one call each."""
        tokenizer = loaded.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        left = getattr(tokenizer, "padding_side", "right") == "left"
        length = max(len(row.input_ids) for row in rows)
        with_types = all(row.token_type_ids is not None for row in rows)
        ids: list[list[int]] = []
        masks: list[list[int]] = []
        type_rows: list[list[int]] = []
        offsets = []
        for row in rows:
            fill = length - len(row.input_ids)
            if left:
                ids.append([pad_id] * fill + list(row.input_ids))
                masks.append([0] * fill + list(row.attention_mask))
                if with_types:
                    type_rows.append([0] * fill + list(row.token_type_ids or ()))
                offsets.append(fill)
            else:
                ids.append(list(row.input_ids) + [pad_id] * fill)
                masks.append(list(row.attention_mask) + [0] * fill)
                if with_types:
                    type_rows.append(list(row.token_type_ids or ()) + [0] * fill)
                offsets.append(0)
        mask = torch.tensor(masks, dtype=torch.long)
        tensors = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": mask}
        if with_types:
            tensors["token_type_ids"] = torch.tensor(type_rows, dtype=torch.long)
        names = self.settings.tensor_input_names
        inputs = {k: v.to(loaded.device) for k, v in tensors.items() if not names or k in names}
        return inputs, mask.to(loaded.device), offsets

    def extract(
        self, outputs: Any, attention_mask: torch.Tensor, rows: list[EncoderRow], offsets: list[int]
    ) -> list[torch.Tensor]:
        raise NotImplementedError


def _logits(outputs: Any) -> torch.Tensor:
    return outputs.logits.float()


def _probability_maps(values: torch.Tensor, keys: list[str]) -> list[dict[str, float]]:
    """One probability map per row of a 2-D tensor, with one softmax and
    one ``tolist`` for all of them."""
    return [
        {key: round(p, PROBABILITY_DECIMALS) for key, p in zip(keys, row, strict=True)}
        for row in torch.softmax(values, dim=-1).tolist()
    ]


def _probability_map(values: torch.Tensor, keys: list[str]) -> dict[str, float]:
    probs = torch.softmax(values, dim=-1).tolist()
    return {key: round(p, PROBABILITY_DECIMALS) for key, p in zip(keys, probs, strict=True)}


class SequenceClassificationEngine(EncoderEngine):
    tokenize_in_batch = True

    def extract(
        self, outputs: Any, attention_mask: torch.Tensor, rows: list[EncoderRow], offsets: list[int]
    ) -> list[torch.Tensor]:
        return list(_logits(outputs).cpu())

    def shape_predictions(
        self,
        request: EncodeRequest,
        options: OutputOptions,
        rows: list[EncoderRow],
        results: list[torch.Tensor],
    ) -> Shaped:
        n = len(results)
        labels = self.id2label() if options.labels else {}
        logits = torch.stack(results)
        if options.raw_logits:
            return Shaped(logits.tolist(), "FP32", [n, int(results[0].numel())])
        if options.probabilities:
            keys = self.class_keys(int(results[0].numel()), options, labels)
            return Shaped(_probability_maps(logits, keys), "BYTES", [n])
        indexes: list[int] = logits.argmax(dim=-1).tolist()
        if options.labels:
            return Shaped([self.label_of(i, labels) for i in indexes], "BYTES", [n])
        return Shaped(list(indexes), "INT64", [n])


class TokenClassificationEngine(EncoderEngine):
    def extract(
        self, outputs: Any, attention_mask: torch.Tensor, rows: list[EncoderRow], offsets: list[int]
    ) -> list[torch.Tensor]:
        logits = _logits(outputs)
        total = logits.shape[1]
        results = []
        for i, row in enumerate(rows):
            # Left padding puts the request's own padding before its tokens.
            start = total - row.output_len if offsets[i] else 0
            results.append(logits[i, start : start + row.output_len].cpu())
        return results

    def shape_predictions(
        self,
        request: EncodeRequest,
        options: OutputOptions,
        rows: list[EncoderRow],
        results: list[torch.Tensor],
    ) -> Shaped:
        n, length = len(results), int(results[0].shape[0])
        labels = self.id2label() if options.labels else {}
        if options.raw_logits:
            return Shaped([r.tolist() for r in results], "FP32", [n, length, int(results[0].shape[1])])
        if options.probabilities:
            keys = self.class_keys(int(results[0].shape[1]), options, labels)
            return Shaped([_probability_maps(r, keys) for r in results], "BYTES", [n, length])
        indexes = [r.argmax(dim=-1).tolist() for r in results]
        if options.labels:
            names = [[[self.label_of(i, labels) for i in row]] for row in indexes]
            return Shaped(names, "BYTES", [n, 1, length])
        return Shaped([[row] for row in indexes], "INT64", [n, 1, length])


class FillMaskEngine(EncoderEngine):
    def check_request(self, request: EncodeRequest, options: OutputOptions) -> None:
        if request.dimensions is not None:
            raise InvalidRequest("'dimensions' applies to embeddings only", param="dimensions")
        self.top_k(request)

    def top_k(self, request: EncodeRequest) -> int:
        """The tokens returned per mask: the request's ``top_k`` within
        ``--max_fill_mask_top_k``, else ``--fill_mask_top_k``."""
        if request.top_k is None:
            return self.settings.fill_mask_top_k
        check_count(
            "too many tokens per mask ('top_k')",
            request.top_k,
            self.settings.max_fill_mask_top_k,
            "max_fill_mask_top_k",
            "top_k",
        )
        return request.top_k

    def make_rows(self, request: EncodeRequest, encoded: dict[str, Any]) -> list[EncoderRow]:
        rows = super().make_rows(request, encoded)
        tokenizer = self.require_loaded().tokenizer
        mask_id = tokenizer.mask_token_id
        if mask_id is None:
            raise InvalidRequest("this model's tokenizer has no mask token")
        for i, row in enumerate(rows):
            row.positions = [j for j, token in enumerate(row.input_ids) if token == mask_id]
            if not row.positions:
                raise InvalidRequest(
                    f"input {i} has no {tokenizer.mask_token} token to fill"
                    " (or it was cut off at the context length)",
                    param=f"inputs.{i}",
                )
        return rows

    def extract(
        self, outputs: Any, attention_mask: torch.Tensor, rows: list[EncoderRow], offsets: list[int]
    ) -> list[torch.Tensor]:
        logits = outputs.logits
        return [
            logits[i, [offsets[i] + p for p in row.positions]].float().cpu() for i, row in enumerate(rows)
        ]

    def shape_predictions(
        self,
        request: EncodeRequest,
        options: OutputOptions,
        rows: list[EncoderRow],
        results: list[torch.Tensor],
    ) -> Shaped:
        n = len(results)
        if options.raw_logits or options.probabilities:
            # Per input, per mask, the k most likely token ids with their
            # probability (or logit), most likely first: never the vocabulary.
            k = min(self.top_k(request), int(results[0].shape[1]))
            maps: list[Any] = []
            for r in results:
                values = r.softmax(dim=-1) if options.probabilities else r
                top_values, top_ids = values.topk(k, dim=-1)
                maps.append(
                    [
                        {
                            str(token): round(value, PROBABILITY_DECIMALS) if options.probabilities else value
                            for token, value in zip(ids, scores, strict=True)
                        }
                        for ids, scores in zip(top_ids.tolist(), top_values.tolist(), strict=True)
                    ]
                )
            return Shaped(maps, "BYTES", [n])
        tokenizer = self.require_loaded().tokenizer
        predictions: list[Any] = []
        for r in results:
            words = [tokenizer.decode([int(token)]).strip() for token in r.argmax(dim=-1).tolist()]
            predictions.append(words[0] if len(words) == 1 else words)
        return Shaped(predictions, "BYTES", [n])


class EmbeddingEngine(EncoderEngine):
    pooling = "mean"
    tokenize_in_batch = True

    def start(self, loaded: LoadedModel) -> None:
        self.pooling = _sentence_transformers_pooling(self.settings.model_path())
        super().start(loaded)

    def extra_info(self) -> dict[str, Any]:
        extra = super().extra_info()
        extra.pop("labels", None)
        loaded = self.loaded
        extra["dimensions"] = getattr(loaded.config, "hidden_size", None) if loaded else None
        extra["pooling"] = self.pooling
        return extra

    def check_request(self, request: EncodeRequest, options: OutputOptions) -> None:
        dimensions = getattr(self.require_loaded().config, "hidden_size", None)
        if request.dimensions is not None and dimensions is not None and request.dimensions > dimensions:
            raise InvalidRequest(
                f"dimensions {request.dimensions} is above the model's {dimensions}", param="dimensions"
            )

    def extract(
        self, outputs: Any, attention_mask: torch.Tensor, rows: list[EncoderRow], offsets: list[int]
    ) -> list[torch.Tensor]:
        hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
        hidden = hidden.float()
        if self.pooling == "cls":
            pooled = torch.stack([hidden[i, offsets[i]] for i in range(len(rows))])
        else:
            mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return list(pooled.cpu())

    def shape_predictions(
        self,
        request: EncodeRequest,
        options: OutputOptions,
        rows: list[EncoderRow],
        results: list[torch.Tensor],
    ) -> Shaped:
        stacked = torch.stack(results)
        if request.dimensions is not None:
            stacked = stacked[:, : request.dimensions]
        # Normalising after truncation gives unit vectors either way.
        normalised = torch.nn.functional.normalize(stacked, p=2, dim=1)
        return Shaped(normalised.tolist(), "FP32", [int(normalised.shape[0]), int(normalised.shape[1])])


def _sentence_transformers_pooling(model_dir: str) -> str:
    """ "cls" when a sentence-transformers folder pools the first token, else "mean"."""
    folder = Path(model_dir)
    modules = folder / "modules.json"
    if not modules.is_file():
        return "mean"
    try:
        for module in json.loads(modules.read_text()):
            if str(module.get("type", "")).endswith("Pooling"):
                config = json.loads((folder / module.get("path", "") / "config.json").read_text())
                if config.get("pooling_mode_cls_token") and not config.get("pooling_mode_mean_tokens"):
                    return "cls"
    except (OSError, ValueError, AttributeError):
        log.warning("cannot read the pooling of %s; using mean pooling", model_dir)
    return "mean"
