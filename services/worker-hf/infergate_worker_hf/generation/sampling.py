"""Choosing the next token of every row of a batch at once.

Each row has its own parameters and its own ``torch.Generator``, so a seeded
request draws the same tokens whether it runs alone or inside a batch.
Penalties follow OpenAI: ``logit -= count * frequency + (count > 0) * presence``
over the tokens generated so far; ``logit_bias`` adds each row's own biases
to its logits after them (so +100 makes a token all but certain, -100 bans
it), for every row of a continuous batch independently. Log probabilities
are those of the model (before penalties, biases, temperature and
truncation), as OpenAI reports them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch

from infergate_common.worker_api import SamplingParams

_SEED_MIX = 0x9E3779B97F4A7C15
_SEED_MASK = (1 << 63) - 1


def choice_generator(seed: int | None, index: int) -> torch.Generator:
    """The random source of one choice: derived from the request's seed (so
    choices of one request differ), or fresh when there is none."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.manual_seed(secrets.randbits(63))
    else:
        generator.manual_seed((seed + index * _SEED_MIX) & _SEED_MASK)
    return generator


@dataclass
class RowSampler:
    """The sampling state of one sequence (one choice of a request)."""

    params: SamplingParams
    generator: torch.Generator
    # Token -> times generated, only kept when a penalty applies.
    counts: dict[int, int] = field(default_factory=dict)
    # logit_bias as (token ids, biases) tensors, built on first use per device.
    _bias: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0.0 or self.params.top_k == 1

    @property
    def penalised(self) -> bool:
        return self.params.presence_penalty != 0.0 or self.params.frequency_penalty != 0.0

    @property
    def truncates(self) -> bool:
        return self.params.top_p < 1.0 or self.params.top_k > 1

    @property
    def biased(self) -> bool:
        return bool(self.params.logit_bias)

    def bias_tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._bias is None or self._bias[0].device != device:
            bias = self.params.logit_bias or {}
            self._bias = (
                torch.tensor(list(bias), dtype=torch.long, device=device),
                torch.tensor(list(bias.values()), dtype=torch.float32, device=device),
            )
        return self._bias

    def record(self, token: int) -> None:
        if self.penalised:
            self.counts[token] = self.counts.get(token, 0) + 1


@dataclass
class TokenChoice:
    """The token picked for a row, with its log probability and the most
    likely alternatives when asked."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


def _apply_penalties(logits: torch.Tensor, rows: list[RowSampler]) -> torch.Tensor:
    penalised = [(i, row) for i, row in enumerate(rows) if row.penalised and row.counts]
    if not penalised:
        return logits
    logits = logits.clone()
    for i, row in penalised:
        ids = torch.tensor(list(row.counts), device=logits.device)
        counts = torch.tensor(list(row.counts.values()), device=logits.device, dtype=logits.dtype)
        penalty = counts * row.params.frequency_penalty + row.params.presence_penalty
        logits[i].index_add_(0, ids, -penalty)
    return logits


def _apply_bias(logits: torch.Tensor, rows: list[RowSampler], fresh: bool) -> torch.Tensor:
    """Each row's ``logit_bias`` added to its own logits (``fresh``: the
    tensor is already a copy that may be changed in place)."""
    biased = [(i, row) for i, row in enumerate(rows) if row.biased]
    if not biased:
        return logits
    if not fresh:
        logits = logits.clone()
    for i, row in biased:
        ids, values = row.bias_tensors(logits.device)
        logits[i].index_add_(0, ids, values.to(logits.dtype))
    return logits


def _truncate(scaled: torch.Tensor, rows: list[RowSampler]) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k then top-p over descending order: (sorted probabilities with the
    cut-off tokens at zero, the token id at each sorted position)."""
    vocab = scaled.shape[-1]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    positions = torch.arange(vocab, device=scaled.device)
    top_k = torch.tensor(
        [row.params.top_k if row.params.top_k > 0 else vocab for row in rows], device=scaled.device
    )
    sorted_logits = sorted_logits.masked_fill(positions[None, :] >= top_k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    top_p = torch.tensor([row.params.top_p for row in rows], device=scaled.device, dtype=probs.dtype)
    mass_before = probs.cumsum(dim=-1) - probs
    # The most likely token always stays.
    probs = probs.masked_fill(mass_before >= top_p[:, None], 0.0)
    return probs, order


def _draw(probs: torch.Tensor, rows: list[RowSampler]) -> torch.Tensor:
    """Inverse-CDF sampling with one uniform number per row from the row's
    own generator."""
    uniforms = torch.stack([torch.rand((), generator=row.generator) for row in rows]).to(probs.device)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    picked = torch.searchsorted(cdf, (uniforms[:, None] * total).to(cdf.dtype), right=True)
    return picked.clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def sample(logits: torch.Tensor, rows: list[RowSampler], logprobs: list[int | None]) -> list[TokenChoice]:
    """One token per row of ``logits`` ``[rows, vocab]``; ``logprobs[i]`` is
    how many alternatives row i wants (None: no log probabilities)."""
    logits = logits.float()
    tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    adjusted = _apply_penalties(logits, rows)
    adjusted = _apply_bias(adjusted, rows, fresh=adjusted is not logits)
    greedy = [i for i, row in enumerate(rows) if row.greedy]
    if greedy:
        index = torch.tensor(greedy, device=logits.device)
        tokens[index] = adjusted[index].argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if not row.greedy]
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        sub_rows = [rows[i] for i in sampled]
        temperature = torch.tensor(
            [row.params.temperature for row in sub_rows], device=logits.device, dtype=logits.dtype
        )
        scaled = adjusted[index] / temperature[:, None]
        if any(row.truncates for row in sub_rows):
            probs, order = _truncate(scaled, sub_rows)
            picked = order.gather(-1, _draw(probs, sub_rows)[:, None]).squeeze(-1)
        else:
            picked = _draw(scaled.softmax(dim=-1), sub_rows)
        tokens[index] = picked
    token_list: list[int] = tokens.tolist()
    for row, token in zip(rows, token_list, strict=True):
        row.record(token)
    choices = [TokenChoice(token=token) for token in token_list]
    wanted = [i for i, k in enumerate(logprobs) if k is not None]
    if wanted:
        _fill_logprobs(logits, tokens, wanted, logprobs, choices)
    return choices


def _fill_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    wanted: list[int],
    logprobs: list[int | None],
    choices: list[TokenChoice],
) -> None:
    index = torch.tensor(wanted, device=logits.device)
    log_probs = logits[index].log_softmax(dim=-1)
    chosen = log_probs.gather(-1, tokens[index][:, None]).squeeze(-1).tolist()
    k_max = max(logprobs[i] or 0 for i in wanted)
    top_values: list[list[float]] = []
    top_ids: list[list[int]] = []
    if k_max:
        values, ids = log_probs.topk(k_max, dim=-1)
        top_values, top_ids = values.tolist(), ids.tolist()
    for position, i in enumerate(wanted):
        choices[i].logprob = chosen[position]
        k = logprobs[i] or 0
        if k:
            choices[i].top = list(zip(top_ids[position][:k], top_values[position][:k], strict=True))


def prompt_logprobs(
    logits: torch.Tensor, prompt_ids: list[int], top: int
) -> list[tuple[float | None, list[tuple[int, float]]]]:
    """Log probability of every prompt token given the ones before it (the
    first has none), from the prefill logits ``[prompt_len, vocab]``."""
    result: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
    if len(prompt_ids) < 2:
        return result
    log_probs = logits[:-1].float().log_softmax(dim=-1)
    targets = torch.tensor(prompt_ids[1:], device=logits.device)
    chosen = log_probs.gather(-1, targets[:, None]).squeeze(-1).tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in chosen]
    if top:
        values, ids = log_probs.topk(top, dim=-1)
        tops = [
            list(zip(row_ids, row_values, strict=True))
            for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
        ]
    result.extend(zip(chosen, tops, strict=True))
    return result
