"""The pieces of generation on their own: incremental detokenizer, stop
strings, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from infergate_common.worker_api import SamplingParams
from infergate_worker_hf.generation.detokenizer import REPLACEMENT, IncrementalDetokenizer, TokenTexts
from infergate_worker_hf.generation.sampling import RowSampler, choice_generator, sample
from infergate_worker_hf.generation.stop import StopStrings

MULTIBYTE = "Café 日本語のテキスト 🙂🚀 Привет"


@pytest.fixture(scope="module")
def tokenizer(models: Path):
    return AutoTokenizer.from_pretrained(models / "tiny-llama")


def test_detokenizer_never_splits_a_character(tokenizer) -> None:
    ids = tokenizer(MULTIBYTE, add_special_tokens=False)["input_ids"]
    partial = [i for i in range(1, len(ids)) if REPLACEMENT in tokenizer.decode(ids[:i])]
    assert partial, "the test text must contain tokens that end inside a character"
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer("Hi")["input_ids"])
    deltas = [detokenizer.add(token) for token in ids]
    deltas.append(detokenizer.flush())
    assert all(REPLACEMENT not in delta for delta in deltas)
    assert "".join(deltas) == MULTIBYTE


def test_detokenizer_flush_releases_an_incomplete_character(tokenizer) -> None:
    ids = tokenizer("日", add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer)
    byte_tokens = [t for t in range(len(tokenizer)) if tokenizer.decode([t]) == REPLACEMENT]
    text = "".join(detokenizer.add(t) for t in ids) + detokenizer.add(byte_tokens[0])
    assert text == "日"
    assert detokenizer.flush() == tokenizer.decode([byte_tokens[0]])


def test_token_texts_give_raw_bytes(tokenizer) -> None:
    texts = TokenTexts(tokenizer)
    ids = tokenizer("🙂", add_special_tokens=False)["input_ids"]
    assert bytes(b for t in ids for b in texts.bytes(t)).decode() == "🙂"
    assert texts.text(tokenizer.eos_token_id) == "</s>"


def test_stop_strings_find_and_hold_back() -> None:
    stops = StopStrings(["STOP", "\n\n"])
    assert stops.find("abc ST", 0) is None
    assert stops.find("abc STOP more", 4) == 4
    assert stops.find("a\n\nb", 2) == 1
    assert stops.held_back("abc ST") == 2
    assert stops.held_back("abc \n") == 1
    assert stops.held_back("abc") == 0
    assert not StopStrings([""])


def rows(n: int, **params: object) -> list[RowSampler]:
    sampling = SamplingParams.model_validate(params)
    return [RowSampler(sampling, choice_generator(sampling.seed, i)) for i in range(n)]


def test_greedy_takes_the_argmax() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    picks = sample(logits, rows(3, temperature=0), [None] * 3)
    assert [p.token for p in picks] == logits.argmax(-1).tolist()


def test_seeded_sampling_is_reproducible_and_seeds_differ() -> None:
    logits = torch.zeros(1, 500)

    def draw(seed: int) -> list[int]:
        sampler = rows(1, temperature=1.0, seed=seed)
        return [sample(logits, sampler, [None])[0].token for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_and_top_p_keep_only_likely_tokens() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, -10.0, -10.0]])
    top_k = rows(1, temperature=1.5, top_k=2, seed=0)
    assert {sample(logits, top_k, [None])[0].token for _ in range(100)} <= {0, 1}
    top_p = rows(1, temperature=1.0, top_p=0.5, seed=0)
    assert {sample(logits, top_p, [None])[0].token for _ in range(50)} == {0}


def test_penalties_discourage_repeats() -> None:
    logits = torch.tensor([[2.0, 1.9, 0.5]])
    plain = rows(1, temperature=0)
    assert [sample(logits, plain, [None])[0].token for _ in range(3)] == [0, 0, 0]
    penalised = rows(1, temperature=0, frequency_penalty=0.5)
    assert [sample(logits, penalised, [None])[0].token for _ in range(3)] == [0, 1, 0]
    present = rows(1, temperature=0, presence_penalty=2.0)
    assert [sample(logits, present, [None])[0].token for _ in range(3)] == [0, 1, 2]


def test_logprobs_are_the_model_distribution() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    (pick,) = sample(logits, rows(1, temperature=0), [2])
    expected = logits.log_softmax(-1)[0]
    assert pick.token == 2
    assert pick.logprob == pytest.approx(float(expected[2]))
    assert [t for t, _ in pick.top] == [2, 1]


def test_logit_bias_applies_to_its_own_row_only() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(3))
    plain = logits.argmax(-1).tolist()
    target = (plain[1] + 7) % 50
    mixed = [
        *rows(1, temperature=0),
        *rows(1, temperature=0, logit_bias={target: 100}),
        *rows(1, temperature=0),
    ]
    picks = sample(logits, mixed, [1, 1, None])
    assert [p.token for p in picks] == [plain[0], target, plain[2]]
    # Log probabilities stay the model's, before the bias.
    assert picks[1].logprob == pytest.approx(float(logits[1].log_softmax(-1)[target]))
    assert picks[1].top[0][0] == plain[1]


def test_logit_bias_bans_a_token_when_sampling_and_with_penalties() -> None:
    logits = torch.tensor([[3.0, 2.9, -5.0]])
    banned = rows(1, temperature=1.0, seed=1, logit_bias={0: -100, 1: -100}, presence_penalty=0.5)
    assert {sample(logits, banned, [None])[0].token for _ in range(30)} == {2}
    assert torch.equal(logits, torch.tensor([[3.0, 2.9, -5.0]]))


def test_growable_layer_matches_concatenation() -> None:
    from transformers.cache_utils import DynamicLayer

    from infergate_worker_hf.generation.growable_cache import GrowableLayer

    generator = torch.Generator().manual_seed(0)
    grown, plain = GrowableLayer(), DynamicLayer()

    def step(length: int) -> None:
        keys = torch.randn(3, 2, length, 4, generator=generator)
        values = torch.randn(3, 2, length, 4, generator=generator)
        got = grown.update(keys, values)
        want = plain.update(keys, values)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    step(5)
    for _ in range(20):
        step(1)
    # Batch edits assign whole tensors, as the runner and DynamicLayer do.
    for layer in (grown, plain):
        layer.batch_select_indices(torch.tensor([0, 2]))
        layer.keys = layer.keys[..., 3:, :]
        layer.values = layer.values[..., 3:, :]
    assert grown.get_seq_length() == plain.get_seq_length() == 22
    for _ in range(3):
        keys, values = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
        got, want = grown.update(keys, values), plain.update(keys, values)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
