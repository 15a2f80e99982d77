"""Every request limit through the real router under gunicorn, refused in
the shape of the protocol it came in on, naming the limit (docs/limits.md);
OpenAI parameters the server does not honour refused by name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ROUTER_ENV, _stop_and_forget
from harness.stack import Stack, Worker

GEN = "limits-gen"
EMB = "limits-emb"
CHAT_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def null_models(stack: Stack) -> Iterator[dict[str, Worker]]:
    """A generative and an embedding model on benchmark-engine workers
    (instant answers: what is measured here is the router's refusal)."""
    workers = {
        GEN: stack.null_worker(GEN, "--tokens", "2"),
        EMB: stack.null_worker(EMB, "--task", "text_embedding"),
    }
    yield workers
    _stop_and_forget(stack, list(workers.values()))


def post(url: str, body: Any) -> requests.Response:
    return requests.post(url, json=body, timeout=60)


def openai_error(response: requests.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return dict(body["error"])


def kserve_error(response: requests.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return str(body["error"])


def limit_error(response: requests.Response, setting: str, param: str | None = None) -> dict[str, Any]:
    error = openai_error(response)
    assert setting in error["message"] and f"INFERGATE_{setting.upper()}" in error["message"]
    assert error["code"] == "limit_exceeded"
    if param is not None:
        assert error["param"] == param
    return error


def completions(stack: Stack, **body: Any) -> requests.Response:
    return post(f"{stack.openai_url}/completions", {"model": GEN, "prompt": "hi", **body})


def chat(stack: Stack, **body: Any) -> requests.Response:
    return post(f"{stack.openai_url}/chat/completions", {"model": GEN, "messages": CHAT_MESSAGES, **body})


# ------------------------------------------------------------ input counts


def test_prompts_per_completions_request(stack: Stack, null_models: dict[str, Worker]) -> None:
    limit_error(completions(stack, prompt=[f"p{i}" for i in range(257)]), "max_prompts", "prompt")
    limit_error(completions(stack, prompt=[[1, 2]] * 257), "max_prompts", "prompt")
    served = completions(stack, prompt=[f"p{i}" for i in range(256)], max_tokens=1)
    assert served.status_code == 200, served.text
    assert len(served.json()["choices"]) == 256


def test_embedding_inputs_per_request(stack: Stack, null_models: dict[str, Worker]) -> None:
    url = f"{stack.openai_url}/embeddings"
    limit_error(post(url, {"model": EMB, "input": ["x"] * 2049}), "max_embedding_inputs", "input")
    limit_error(post(url, {"model": EMB, "input": [[1]] * 2049}), "max_embedding_inputs", "input")
    served = post(url, {"model": EMB, "input": ["x"] * 2048})
    assert served.status_code == 200, served.text
    assert len(served.json()["data"]) == 2048


def test_v1_instances_per_request(stack: Stack, null_models: dict[str, Worker]) -> None:
    message = kserve_error(post(f"{stack.router_url}/v1/models/{EMB}:predict", {"instances": ["x"] * 2049}))
    assert "too many instances" in message and "max_v1_instances" in message
    message = kserve_error(post(f"{stack.router_url}/v1/models/{EMB}:predict", {"inputs": ["x"] * 2049}))
    assert "max_v1_instances" in message
    # Each instance of a generative model is a prompt.
    message = kserve_error(post(f"{stack.router_url}/v1/models/{GEN}:predict", {"instances": ["x"] * 257}))
    assert "max_prompts" in message
    served = post(f"{stack.router_url}/v1/models/{EMB}:predict", {"instances": ["x"] * 2048})
    assert served.status_code == 200 and len(served.json()["predictions"]) == 2048


def _tensor(shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": shape, "datatype": "BYTES", "data": data}]}


def test_v2_elements_and_tensor_consistency(stack: Stack, null_models: dict[str, Worker]) -> None:
    url = f"{stack.router_url}/v2/models/{EMB}/infer"
    message = kserve_error(post(url, _tensor([2049], ["x"] * 2049)))
    assert "too many tensor elements" in message and "max_v2_elements" in message
    # The shape counts, whatever the data holds; every input tensor counts.
    assert "max_v2_elements" in kserve_error(post(url, _tensor([100000, 100000], ["x"])))
    two = _tensor([1500], ["x"] * 1500)
    two["inputs"].append({"name": "input-1", "shape": [1500], "datatype": "BYTES", "data": ["y"] * 1500})
    assert "max_v2_elements" in kserve_error(post(url, two))
    assert "has shape [2] but 3 elements" in kserve_error(post(url, _tensor([2], ["a", "b", "c"])))
    assert "negative dimension" in kserve_error(post(url, _tensor([-1], ["a"])))
    ragged = kserve_error(post(url, _tensor([3, 2], [["a", "b"], ["c", "d", "e"], ["f"]])))
    assert "does not have shape [3, 2]" in ragged
    assert "nests deeper" in kserve_error(post(url, _tensor([2], [["a"], ["b"]])))
    nested = post(url, _tensor([2, 2], [["a", "b"], ["c", "d"]]))
    assert nested.status_code == 200, nested.text
    assert nested.json()["outputs"][0]["shape"][0] == 4


# -------------------------------------------------------- sampling bounds


def test_stop_sequences_count_and_length(stack: Stack, null_models: dict[str, Worker]) -> None:
    limit_error(chat(stack, stop=[f"s{i}" for i in range(17)]), "max_stop_sequences", "stop")
    limit_error(completions(stack, stop="x" * 257), "max_stop_length", "stop")
    assert chat(stack, stop=[f"s{i}" for i in range(16)], max_tokens=1).status_code == 200
    message = kserve_error(
        post(
            f"{stack.router_url}/v1/models/{GEN}:predict",
            {"instances": ["x"], "parameters": {"stop": [f"s{i}" for i in range(17)]}},
        )
    )
    assert "max_stop_sequences" in message


def test_n_and_max_tokens_against_the_context(stack: Stack, null_models: dict[str, Worker]) -> None:
    assert openai_error(chat(stack, n=129))["param"] == "n"
    # The null engine's context is 4096 tokens.
    error = openai_error(completions(stack, max_tokens=5000))
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert "4096" in error["message"]
    assert openai_error(chat(stack, max_completion_tokens=4097))["code"] == "context_length_exceeded"
    message = kserve_error(
        post(
            f"{stack.router_url}/v1/models/{GEN}:predict",
            {"instances": ["x"], "parameters": {"max_tokens": 5000}},
        )
    )
    assert "maximum context length is 4096" in message


def test_logprobs_ranges(stack: Stack, null_models: dict[str, Worker]) -> None:
    limit_error(completions(stack, logprobs=6), "max_logprobs", "logprobs")
    assert openai_error(chat(stack, logprobs=True, top_logprobs=21))["param"] == "top_logprobs"
    assert openai_error(completions(stack, logprobs=-1))["param"] == "logprobs"


def test_seed_range(stack: Stack, null_models: dict[str, Worker]) -> None:
    assert openai_error(chat(stack, seed=2**63))["param"] == "seed"
    assert openai_error(completions(stack, seed=-(2**63) - 1))["param"] == "seed"
    assert chat(stack, seed=-5, max_tokens=1).status_code == 200
    assert chat(stack, seed=2**63 - 1, max_tokens=1).status_code == 200
    message = kserve_error(
        post(
            f"{stack.router_url}/v1/models/{GEN}:predict", {"instances": ["x"], "parameters": {"seed": 2**64}}
        )
    )
    assert "seed" in message


def test_logit_bias_is_validated(stack: Stack, null_models: dict[str, Worker]) -> None:
    error = openai_error(chat(stack, logit_bias={"5": 101}))
    assert error["param"] == "logit_bias" and "between -100 and 100" in error["message"]
    assert openai_error(completions(stack, logit_bias={"five": 1}))["param"] == "logit_bias"
    assert openai_error(chat(stack, logit_bias={"-3": 1}))["param"] == "logit_bias"
    limit_error(chat(stack, logit_bias={str(i): 1 for i in range(301)}), "max_logit_bias", "logit_bias")
    assert chat(stack, logit_bias={str(i): -100 for i in range(300)}, max_tokens=1).status_code == 200


# ------------------------------------------------------------ JSON nesting


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deep_json_is_a_400_in_each_shape_never_a_500(stack: Stack, null_models: dict[str, Worker]) -> None:
    headers = {"Content-Type": "application/json"}
    for depth in (65, 5000, 200000):
        body = (
            f'{{"model": "{GEN}", "messages": [{{"role": "user", "content": "hi"}}], "x": {_nested(depth)}}}'
        )
        response = requests.post(
            f"{stack.openai_url}/chat/completions", data=body, headers=headers, timeout=30
        )
        limit_error(response, "max_json_depth")
        v1 = f'{{"instances": {_nested(depth)}}}'
        response = requests.post(
            f"{stack.router_url}/v1/models/{EMB}:predict", data=v1, headers=headers, timeout=30
        )
        assert "max_json_depth" in kserve_error(response)
        v2 = json.dumps(_tensor([1], ["x"]))[:-1] + f', "parameters": {{"p": {_nested(depth)}}}}}'
        response = requests.post(
            f"{stack.router_url}/v2/models/{EMB}/infer", data=v2, headers=headers, timeout=30
        )
        assert "max_json_depth" in kserve_error(response)
    # Brackets inside strings are text, not nesting.
    text = "[" * 500
    assert chat(stack, messages=[{"role": "user", "content": text}], max_tokens=1).status_code == 200
    # 64 levels are allowed (the body object itself is the first).
    ok = chat(stack, max_tokens=1, metadata={"x": json.loads(_nested(62))})
    assert ok.status_code == 200, ok.text


# ---------------------------------------------- parameters not supported


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("chat", "audio", {"voice": "alloy", "format": "wav"}),
        ("chat", "modalities", ["text", "audio"]),
        ("chat", "reasoning_effort", "high"),
        ("chat", "prediction", {"type": "content", "content": "x"}),
        ("chat", "web_search_options", {}),
        ("chat", "functions", [{"name": "f", "parameters": {}}]),
        ("chat", "store", True),
        ("chat", "min_p", 0.1),
        ("chat", "repetition_penalty", 1.2),
        ("completions", "best_of", 3),
        ("completions", "suffix", " the end"),
        ("completions", "use_beam_search", True),
        ("embeddings", "normalize", False),
    ],
)
def test_unsupported_parameters_are_refused_by_name(
    stack: Stack, null_models: dict[str, Worker], route: str, field: str, value: Any
) -> None:
    bodies = {
        "chat": {"model": GEN, "messages": CHAT_MESSAGES},
        "completions": {"model": GEN, "prompt": "hi"},
        "embeddings": {"model": EMB, "input": "hi"},
    }
    paths = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings"}
    error = openai_error(post(f"{stack.openai_url}/{paths[route]}", {**bodies[route], field: value}))
    assert error["param"] == field and error["code"] == "unsupported_parameter"
    assert f"'{field}'" in error["message"]


def test_default_values_of_unsupported_parameters_are_accepted(
    stack: Stack, null_models: dict[str, Worker]
) -> None:
    assert completions(stack, best_of=1, suffix=None, max_tokens=1).status_code == 200
    assert (
        chat(stack, store=False, modalities=["text"], max_tokens=1, user="u", service_tier="auto").status_code
        == 200
    )


# ---------------------------------------------------- configured limits


@pytest.fixture(scope="module")
def tight_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A router whose limits are set through ``INFERGATE_*``."""
    env = {
        **ROUTER_ENV,
        "INFERGATE_MAX_PROMPTS": "2",
        "INFERGATE_MAX_EMBEDDING_INPUTS": "3",
        "INFERGATE_MAX_V1_INSTANCES": "4",
        "INFERGATE_MAX_V2_ELEMENTS": "5",
        "INFERGATE_MAX_N": "2",
        "INFERGATE_MAX_STOP_SEQUENCES": "1",
        "INFERGATE_MAX_STOP_LENGTH": "4",
        "INFERGATE_MAX_LOGIT_BIAS": "1",
        "INFERGATE_MAX_LOGPROBS": "1",
        "INFERGATE_MAX_TOP_LOGPROBS": "2",
        "INFERGATE_MAX_JSON_DEPTH": "6",
    }
    own = Stack(Path(tmp_path_factory.mktemp("tight")), router_env=env, router_workers=1)
    try:
        own.start()
        own.null_worker(GEN, "--tokens", "2")
        own.null_worker(EMB, "--task", "text_embedding")
        yield own
    finally:
        own.stop()


def test_every_limit_follows_its_setting(tight_stack: Stack) -> None:
    s = tight_stack
    limit_error(completions(s, prompt=["a", "b", "c"]), "max_prompts")
    assert completions(s, prompt=["a", "b"], max_tokens=1).status_code == 200
    limit_error(
        post(f"{s.openai_url}/embeddings", {"model": EMB, "input": ["x"] * 4}), "max_embedding_inputs"
    )
    v1 = post(f"{s.router_url}/v1/models/{EMB}:predict", {"instances": ["x"] * 5})
    assert "max_v1_instances" in kserve_error(v1)
    assert "max_v2_elements" in kserve_error(
        post(f"{s.router_url}/v2/models/{EMB}/infer", _tensor([6], ["x"] * 6))
    )
    limit_error(chat(s, n=3), "max_n", "n")
    limit_error(chat(s, stop=["a", "b"]), "max_stop_sequences")
    limit_error(chat(s, stop=["abcde"]), "max_stop_length")
    limit_error(chat(s, logit_bias={"1": 1, "2": 1}), "max_logit_bias")
    limit_error(completions(s, logprobs=2), "max_logprobs")
    limit_error(chat(s, logprobs=True, top_logprobs=3), "max_top_logprobs")
    limit_error(chat(s, metadata={"a": {"b": {"c": {"d": {"e": {}}}}}}), "max_json_depth")
    assert chat(s, n=2, stop=["abcd"], logit_bias={"1": 1}, max_tokens=1).status_code == 200
