"""The shared request limits: JSON nesting measured without recursion, the
sampling bounds, and refusals that name their setting."""

from __future__ import annotations

import json

import pytest

from infergate_common.errors import InvalidRequest
from infergate_common.limits import (
    GenerationLimits,
    WorkerLimits,
    check_encode,
    check_logit_bias_vocabulary,
    check_sampling,
    load_json,
    nesting_depth,
    scanned_depth,
)
from infergate_common.settings import load_settings
from infergate_common.worker_api import EncodeRequest, SamplingParams


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("{}", 1),
        ('{"a": [1, [2, {"b": "[[[[[\\"]]"}]]}', 4),
        ('["]]]]", [["{{{"]]]', 3),
        ("[" * 300 + "]" * 300, 300),
    ],
)
def test_both_measures_agree(text: str, depth: int) -> None:
    assert scanned_depth(text.encode()) == depth
    assert nesting_depth(json.loads(text), 1000) == depth


def test_load_json_refuses_deep_bodies_whichever_measure_runs() -> None:
    for body in (
        "[" * 65 + "]" * 65,  # few strings: the byte scan
        json.dumps(["x"] * 200 + [json.loads("[" * 64 + "]" * 64)]),  # many strings: the walk
        "[" * 100000 + "]" * 100000,  # past the parser's own recursion
    ):
        with pytest.raises(InvalidRequest) as caught:
            load_json(body.encode(), 64)
        assert "max_json_depth" in caught.value.message and caught.value.status == 400
    assert load_json(("[" * 64 + "]" * 64).encode(), 64) == json.loads("[" * 64 + "]" * 64)
    # Brackets inside strings are text.
    assert load_json(json.dumps({"t": "[" * 1000}).encode(), 4) == {"t": "[" * 1000}


def test_sampling_limits_name_their_setting() -> None:
    limits = GenerationLimits(max_n=2, max_stop_sequences=1, max_stop_length=3, max_logit_bias=1)
    cases = [
        (SamplingParams(n=3), "max_n"),
        (SamplingParams(stop=["a", "b"]), "max_stop_sequences"),
        (SamplingParams(stop=["abcd"]), "max_stop_length"),
        (SamplingParams(logit_bias={1: 1.0, 2: 1.0}), "max_logit_bias"),
    ]
    for params, setting in cases:
        with pytest.raises(InvalidRequest) as caught:
            check_sampling(params, limits)
        assert f"INFERGATE_{setting.upper()}" in caught.value.message
        assert caught.value.code == "limit_exceeded"
    for params in (SamplingParams(seed=2**63), SamplingParams(logit_bias={1: 100.5})):
        with pytest.raises(InvalidRequest):
            check_sampling(params, limits)
    check_sampling(SamplingParams(n=2, stop=["abc"], logit_bias={1: -100.0}, seed=-(2**63)), limits)


def test_logit_bias_vocabulary_and_encode_inputs() -> None:
    check_logit_bias_vocabulary({0: 1.0, 9: 1.0}, 10)
    with pytest.raises(InvalidRequest, match=r"out of the vocabulary 0\.\.9"):
        check_logit_bias_vocabulary({10: 1.0}, 10)
    limits = load_settings(WorkerLimits, {"INFERGATE_MAX_ENCODE_INPUTS": "2"})
    check_encode(EncodeRequest(request_id="r", inputs=["a", "b"]), limits)
    with pytest.raises(InvalidRequest, match="max_encode_inputs"):
        check_encode(EncodeRequest(request_id="r", inputs=["a", "b", "c"]), limits)
