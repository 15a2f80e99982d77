"""The model side of the scheduler: prefill, one decoding step, and how
rows enter and leave the batch's key/value cache.

* :class:`DecoderRunner` (decoder-only models): continuous batching. A new
  request is prefilled on its own, then its cache is merged into the running
  batch with left padding; the attention mask marks the padding and the
  position ids are counted from the mask, so every row computes what it
  would alone. Rows that finish are dropped from the cache at once, and
  columns that became padding for every row are trimmed.
* :class:`Seq2SeqRunner` (encoder-decoder models): wave batching. Requests
  waiting together are encoded in one padded pass and decoded together;
  finished rows leave at once, new requests wait for the wave to end.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..loading import LoadedModel
from .growable_cache import growable_cache, mergeable, plain_layers
from .sequence import Job

log = logging.getLogger(__name__)


def _forward_parameters(model: Any) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


@dataclass
class Prefilled:
    """Rows of newly admitted jobs: their batch state, the logits of their
    next token (one row per choice) and, per job, the prompt logits when
    the job wants prompt log probabilities."""

    state: Any
    logits: torch.Tensor
    prompt_logits: list[torch.Tensor | None]


class BatchRunner(ABC):
    # Whether a job may join a batch that is already decoding.
    joins_running: bool = True
    # Jobs one prefill call takes (None: as many as fit).
    jobs_per_prefill: int | None = 1
    description = ""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model: Any = loaded.model
        self.device = loaded.device
        parameters = _forward_parameters(self.model)
        # transformers renamed past_key_values to cache (5.2x); accept both.
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self.logits_to_keep = "logits_to_keep" in parameters

    @abstractmethod
    def prefill(self, jobs: list[Job]) -> Prefilled: ...

    @abstractmethod
    def step(self, state: Any, tokens: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Feed one token per row; the new state and next-token logits."""

    @abstractmethod
    def merge(self, running: Any | None, new: Any) -> Any: ...

    @abstractmethod
    def select(self, state: Any, keep: list[int]) -> Any: ...


@dataclass
class DecoderState:
    cache: Any
    # [rows, length]: 1 for real tokens, 0 for left padding.
    mask: torch.Tensor
    # Whether no row has padding (the mask is all ones).
    unpadded: bool = True


class DecoderRunner(BatchRunner):
    joins_running = True
    jobs_per_prefill = 1
    description = "continuous"

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded)
        self.growable = plain_layers(loaded.config)

    def _check_cache(self, cache: Any) -> None:
        layers = getattr(cache, "layers", None)
        if layers is None or not all(mergeable(layer) for layer in layers):
            # Sliding-window or other special layers cannot be merged by
            # padding: serve one request at a time instead.
            if self.joins_running:
                log.warning("model cache %s cannot be merged; batching across requests is off", cache)
            self.joins_running = False
            self.description = "one request at a time (cache layout cannot be merged)"

    def prefill(self, jobs: list[Job]) -> Prefilled:
        (job,) = jobs
        ids = torch.tensor([job.prompt.prompt_ids], device=self.device)
        length = ids.shape[1]
        kwargs: dict[str, Any] = {
            "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(length, device=self.device)[None, :],
            "use_cache": True,
        }
        if self.logits_to_keep and not job.wants_prompt_logprobs:
            kwargs["logits_to_keep"] = 1
        if self.growable:
            kwargs[self.cache_kwarg] = growable_cache()
        output = self.model(input_ids=ids, **kwargs)
        cache = _output_cache(output)
        self._check_cache(cache)
        logits = output.logits[0]
        prompt_logits = logits if job.wants_prompt_logprobs else None
        last = logits[-1:]
        mask = kwargs["attention_mask"]
        if job.n > 1:
            cache.batch_repeat_interleave(job.n)
            mask = mask.repeat(job.n, 1)
            last = last.expand(job.n, -1)
        return Prefilled(DecoderState(cache, mask), last, [prompt_logits])

    def step(self, state: DecoderState, tokens: torch.Tensor) -> tuple[DecoderState, torch.Tensor]:
        mask = torch.cat([state.mask, state.mask.new_ones((state.mask.shape[0], 1))], dim=1)
        kwargs: dict[str, Any] = {
            # Without padding the model may skip building a mask.
            "attention_mask": None if state.unpadded else mask,
            "position_ids": mask.sum(dim=1, keepdim=True) - 1,
            "use_cache": True,
            self.cache_kwarg: state.cache,
        }
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        output = self.model(input_ids=tokens[:, None], **kwargs)
        return DecoderState(_output_cache(output), mask, state.unpadded), output.logits[:, -1]

    @staticmethod
    def _pad_left(state: DecoderState, length: int) -> None:
        extra = length - state.mask.shape[1]
        if extra <= 0:
            return
        for layer in state.cache.layers:
            layer.keys = F.pad(layer.keys, (0, 0, extra, 0))
            layer.values = F.pad(layer.values, (0, 0, extra, 0))
        state.mask = F.pad(state.mask, (extra, 0))
        state.unpadded = False

    def merge(self, running: DecoderState | None, new: DecoderState) -> DecoderState:
        if running is None:
            return new
        length = max(running.mask.shape[1], new.mask.shape[1])
        self._pad_left(running, length)
        self._pad_left(new, length)
        for mine, theirs in zip(running.cache.layers, new.cache.layers, strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        running.mask = torch.cat([running.mask, new.mask], dim=0)
        running.unpadded = running.unpadded and new.unpadded
        return running

    def select(self, state: DecoderState, keep: list[int]) -> DecoderState:
        index = torch.tensor(keep, device=self.device, dtype=torch.long)
        state.cache.batch_select_indices(index)
        mask = state.mask[index]
        # Columns that are padding in every remaining row are dead weight.
        first = int(mask.any(dim=0).int().argmax())
        if first > 0:
            for layer in state.cache.layers:
                layer.keys = layer.keys[..., first:, :]
                layer.values = layer.values[..., first:, :]
            mask = mask[:, first:]
        state.mask = mask
        state.unpadded = bool(mask.all())
        return state


@dataclass
class Seq2SeqState:
    encoder_hidden: torch.Tensor
    encoder_mask: torch.Tensor
    cache: Any


class Seq2SeqRunner(BatchRunner):
    joins_running = False
    jobs_per_prefill = None
    description = "waves (requests waiting together decode together)"

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded)
        config = loaded.config
        start = getattr(config, "decoder_start_token_id", None)
        generation_config = getattr(self.model, "generation_config", None)
        if start is None and generation_config is not None:
            start = generation_config.decoder_start_token_id
        if start is None:
            start = config.pad_token_id
        self.decoder_start = int(start)
        self.pad_id = int(config.pad_token_id if config.pad_token_id is not None else 0)

    def _decode(self, hidden: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor, cache: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        kwargs: dict[str, Any] = {"use_cache": True}
        if cache is not None:
            kwargs[self.cache_kwarg] = cache
        return self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=mask,
            decoder_input_ids=tokens[:, None],
            **kwargs,
        )

    def prefill(self, jobs: list[Job]) -> Prefilled:
        length = max(len(job.prompt.prompt_ids) for job in jobs)
        ids = torch.full((len(jobs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), length), dtype=torch.long)
        for row, job in enumerate(jobs):
            prompt = job.prompt.prompt_ids
            ids[row, : len(prompt)] = torch.tensor(prompt)
            mask[row, : len(prompt)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        encoder = self.model.get_encoder()
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = torch.tensor([j for j, job in enumerate(jobs) for _ in range(job.n)], device=self.device)
        hidden, mask = hidden[rows], mask[rows]
        start = torch.full((len(rows),), self.decoder_start, dtype=torch.long, device=self.device)
        output = self._decode(hidden, mask, start, None)
        state = Seq2SeqState(hidden, mask, _output_cache(output))
        return Prefilled(state, output.logits[:, -1], [None] * len(jobs))

    def step(self, state: Seq2SeqState, tokens: torch.Tensor) -> tuple[Seq2SeqState, torch.Tensor]:
        output = self._decode(state.encoder_hidden, state.encoder_mask, tokens, state.cache)
        state.cache = _output_cache(output)
        return state, output.logits[:, -1]

    def merge(self, running: Seq2SeqState | None, new: Seq2SeqState) -> Seq2SeqState:
        if running is not None:
            raise RuntimeError("encoder-decoder batches do not take new rows while decoding")
        return new

    def select(self, state: Seq2SeqState, keep: list[int]) -> Seq2SeqState:
        index = torch.tensor(keep, device=self.device, dtype=torch.long)
        state.cache.batch_select_indices(index)
        state.encoder_hidden = state.encoder_hidden[index]
        state.encoder_mask = state.encoder_mask[index]
        return state


def runner_for(loaded: LoadedModel) -> BatchRunner:
    return Seq2SeqRunner(loaded) if loaded.encoder_decoder else DecoderRunner(loaded)
