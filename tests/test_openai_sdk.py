"""The official openai SDK against the real router, worker-hf and MiniLM."""

from __future__ import annotations

import math

import openai
import pytest
import requests
from harness.stack import Stack, Worker
from openai.types.chat import ChatCompletionMessageParam

pytestmark = pytest.mark.usefixtures("tiny_llm")


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0, timeout=60)


def test_models_lists_task_and_backend(stack: Stack, minilm: Worker) -> None:
    body = requests.get(f"{stack.openai_url}/models", timeout=10).json()
    assert body["object"] == "list"
    by_id = {entry["id"]: entry for entry in body["data"]}
    assert by_id["tiny-llm"]["object"] == "model"
    assert by_id["tiny-llm"]["task"] == "text_generation"
    assert by_id["tiny-llm"]["backend"] == "huggingface"
    assert by_id["minilm"]["task"] == "text_embedding"


def test_sdk_lists_the_models(client: openai.OpenAI) -> None:
    assert "tiny-llm" in {model.id for model in client.models.list()}


def test_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="tiny-llm", prompt="Hello there", max_tokens=8, temperature=0
    )
    choice = completion.choices[0]
    assert isinstance(choice.text, str)
    assert choice.finish_reason in ("length", "stop")
    assert completion.usage is not None
    assert 1 <= completion.usage.completion_tokens <= 8
    assert completion.usage.prompt_tokens >= 1
    assert completion.model == "tiny-llm"


def test_streamed_completion_matches_the_plain_one(client: openai.OpenAI) -> None:
    """Greedy decoding: the streamed pieces, joined, are the plain answer,
    so every token arrived once and in order."""
    plain = client.completions.create(model="tiny-llm", prompt="Once upon", max_tokens=24, temperature=0)
    chunks = list(
        client.completions.create(
            model="tiny-llm",
            prompt="Once upon",
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == plain.choices[0].text
    reasons = [c.choices[0].finish_reason for c in text_chunks]
    assert all(reason is None for reason in reasons[:-1])
    assert reasons[-1] == plain.choices[0].finish_reason
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert plain.usage is not None
    assert usage_chunk.usage.completion_tokens == plain.usage.completion_tokens


def test_chat(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="tiny-llm",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
    )
    message = chat.choices[0].message
    assert message.role == "assistant"
    assert isinstance(message.content, str)
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.object == "chat.completion"


def test_streamed_chat(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a story"}]
    plain = client.chat.completions.create(model="tiny-llm", messages=messages, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model="tiny-llm",
        messages=messages,
        max_tokens=20,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert all(reason is None for reason in reasons[:-1])
    assert reasons[-1] in ("length", "stop")


def test_seeded_sampling_is_repeatable(client: openai.OpenAI) -> None:
    def sample() -> str:
        completion = client.completions.create(
            model="tiny-llm", prompt="Seeds", max_tokens=12, temperature=1.0, seed=1234
        )
        return completion.choices[0].text

    assert sample() == sample()


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_embeddings_place_similar_sentences_closer(client: openai.OpenAI, minilm: Worker) -> None:
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    response = client.embeddings.create(model="minilm", input=sentences)
    vectors = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [384, 384, 384]
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
    eating = _cosine(vectors[0], vectors[1])
    unrelated = _cosine(vectors[0], vectors[2])
    assert eating > 0.5
    assert eating > unrelated + 0.3
    assert response.usage.prompt_tokens > 0


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404
    body = caught.value.body
    assert isinstance(body, dict)
    assert "no-such-model" in str(body.get("message", body))


def test_out_of_range_value_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-llm", prompt="x", temperature=5.0)
    assert caught.value.status_code == 400


def test_unknown_fields_are_tolerated(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="tiny-llm", prompt="x", max_tokens=2, extra_body={"a_field_from_the_future": True}
    )
    assert completion.choices
