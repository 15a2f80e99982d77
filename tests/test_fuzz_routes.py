"""Property-based fuzzing of every public route through the real router:
whatever the body, the answer is never a 500, and every error is in the
shape of the protocol the request came in on (OpenAI ``{"error": {...}}``,
KServe ``{"error": "..."}``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from conftest import StartWorker
from harness.stack import Stack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GEN = "fuzz-gen"
EMB = "fuzz-emb"

# JSON values, small and large, with the types clients get wrong.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)

OPENAI_FIELDS = [
    "model", "prompt", "messages", "input", "max_tokens", "temperature", "top_p", "n", "stream",
    "stop", "seed", "logprobs", "top_logprobs", "echo", "presence_penalty", "frequency_penalty",
    "stream_options", "dimensions", "encoding_format", "user", "logit_bias", "suffix", "best_of",
]  # fmt: skip
KSERVE_FIELDS = ["instances", "inputs", "parameters", "outputs", "id", "instances"]

BASES: dict[str, dict[str, Any]] = {
    "/openai/v1/completions": {"model": GEN, "prompt": "go", "max_tokens": 4},
    "/openai/v1/chat/completions": {"model": GEN, "messages": [{"role": "user", "content": "go"}]},
    "/openai/v1/embeddings": {"model": EMB, "input": "go"},
    f"/v1/models/{GEN}:predict": {"instances": ["go"], "parameters": {"max_tokens": 4}},
    f"/v1/models/{EMB}:predict": {"instances": ["go"]},
    f"/v2/models/{EMB}/infer": {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["go"]}]
    },
    f"/v2/models/{GEN}/infer": {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["go"]}]
    },
}
GET_PATHS = [
    "/openai/v1/models", f"/openai/v1/models/{GEN}", "/openai/v1/models/nope", "/openai/v1/streams/nope",
    "/v1/models", f"/v1/models/{EMB}", "/v1/models/nope", "/v2", "/v2/health/live", "/v2/health/ready",
    f"/v2/models/{EMB}", f"/v2/models/{EMB}/ready", "/v2/models/nope", "/readyz", "/",
]  # fmt: skip


@pytest.fixture(scope="module")
def router(stack: Stack, null_worker_module: StartWorker) -> str:
    null_worker_module(GEN, "--tokens", "8")
    null_worker_module(EMB, "--task", "text_embedding")
    return stack.router_url


@pytest.fixture(scope="module")
def null_worker_module(stack: Stack) -> Any:
    started: list[Any] = []

    def start(name: str, *args: str) -> Any:
        worker = stack.null_worker(name, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        stack.stop_worker(worker)
        stack.forget_model(worker.name)


def check_answer(path: str, response: requests.Response) -> None:
    assert response.status_code != 500, f"{path}: 500 {response.text[:300]}"
    assert response.status_code < 500 or response.status_code in (502, 503, 504), response.text[:300]
    if response.status_code < 400:
        return
    assert "application/json" in response.headers.get("Content-Type", ""), response.headers
    body = response.json()
    if path.startswith("/openai/"):
        error = body["error"]
        assert isinstance(error, dict) and isinstance(error["message"], str) and error["type"], body
    else:
        assert isinstance(body, dict) and isinstance(body["error"], str), body


def post(router: str, path: str, data: bytes) -> None:
    with requests.post(
        router + path, data=data, headers={"Content-Type": "application/json"}, timeout=30, stream=True
    ) as response:
        response.content  # noqa: B018 - read a stream to its end
        check_answer(path, response)


def mutated(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(fields), json_values, max_size=4).map(
        lambda extra: {**base, **extra}
    )


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("path", sorted(BASES))
def test_post_routes_never_answer_500(router: str, path: str) -> None:
    fields = OPENAI_FIELDS if path.startswith("/openai/") else KSERVE_FIELDS
    bodies = st.one_of(
        mutated(BASES[path], fields),
        json_values.map(lambda value: {"model": GEN, "x": value} if path.startswith("/openai/") else value),
        json_values,
    )

    @FUZZ
    @given(body=bodies)
    def run(body: Any) -> None:
        post(router, path, json.dumps(body).encode())

    run()


@pytest.mark.parametrize("path", sorted(BASES))
def test_malformed_and_deeply_nested_bodies(router: str, path: str) -> None:
    @FUZZ
    @given(
        raw=st.one_of(
            st.binary(max_size=200),
            st.integers(min_value=1, max_value=100_000).map(lambda depth: b"[" * depth + b"]" * depth),
            st.integers(min_value=1, max_value=50_000).map(
                lambda depth: b'{"model": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
            ),
        )
    )
    def run(raw: bytes) -> None:
        post(router, path, raw)

    run()


def test_get_routes_and_unknown_paths(router: str) -> None:
    @FUZZ
    @given(
        path=st.one_of(
            st.sampled_from(GET_PATHS),
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz/:-_.0123456789", max_size=40).map(lambda p: "/" + p),
            st.text(max_size=20).map(lambda p: "/openai/v1/" + requests.utils.quote(p)),
        ),
        method=st.sampled_from(["GET", "POST", "DELETE"]),
    )
    def run(path: str, method: str) -> None:
        response = requests.request(method, router + path, timeout=30)
        check_answer(path, response)

    run()
