"""The OpenAI Batch API through the real stack: the router's files and
batches routes, a real Celery batch worker (Redis broker, prefork pool),
worker-hf with the small Llama and MiniLM, driven by the ``openai`` SDK
exactly as against OpenAI."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from harness.batch import jsonl, read_lines, start_batch_worker, wait_batch
from harness.processes import Process, stop_all
from harness.stack import Stack, Worker
from openai import OpenAI

# Lines over this many bytes of request body go to the error file.
MAX_LINE_BYTES = 4096


@pytest.fixture(scope="module")
def batch_worker(stack: Stack) -> Iterator[Process]:
    # One pool process: chunks of 4 lines run in queue order, so the first lines
    # of a batch finish first however slow the machine is (the expiry test).
    env = {"INFERGATE_BATCH_MAX_LINE_BYTES": str(MAX_LINE_BYTES), "INFERGATE_BATCH_CHUNK_LINES": "4"}
    worker = start_batch_worker(stack, env=env, concurrency=1)
    yield worker
    stop_all([worker])


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0)


def upload(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    return client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch").id


def run_batch(client: OpenAI, lines: list[dict[str, Any]], endpoint: str, timeout_s: float = 180) -> Any:
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint=endpoint, completion_window="24h"
    )  # type: ignore[arg-type]
    assert batch.status == "validating"
    assert batch.request_counts is not None and batch.request_counts.total == len(lines)
    return wait_batch(client, batch.id, timeout_s)


def by_custom_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for line in lines:
        assert line["custom_id"] not in found, f"custom_id {line['custom_id']} written twice"
        found[line["custom_id"]] = line
    return found


def request(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


# ------------------------------------------------------------- round trips


def test_chat_batch_equals_interactive(client: OpenAI, tiny_llm: Worker, batch_worker: Process) -> None:
    prompts = ["Hello there", "What is the capital of France?", "Count to three", "Say something"]
    bodies = [
        {"model": "tiny-llm", "messages": [{"role": "user", "content": p}], "max_tokens": 8, "temperature": 0}
        for p in prompts
    ]
    lines = [request(f"chat-{i}", "/v1/chat/completions", body) for i, body in enumerate(bodies)]
    batch = run_batch(client, lines, "/v1/chat/completions")
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == len(lines) and batch.request_counts.failed == 0
    assert batch.error_file_id is None
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = by_custom_id(read_lines(client, batch.output_file_id))
    assert sorted(output) == sorted(line["custom_id"] for line in lines)
    for line in lines:
        got = output[line["custom_id"]]
        assert got["id"].startswith("batch_req_") and got["error"] is None
        assert got["response"]["status_code"] == 200
        answer = got["response"]["body"]
        assert answer["object"] == "chat.completion" and answer["model"] == "tiny-llm"
        interactive = client.chat.completions.with_raw_response.create(**line["body"]).http_response.json()
        assert answer["choices"] == interactive["choices"]
        assert answer["usage"]["prompt_tokens"] == interactive["usage"]["prompt_tokens"]
        assert answer["usage"]["completion_tokens"] == interactive["usage"]["completion_tokens"]


def test_completions_batch_equals_interactive(
    client: OpenAI, tiny_llm: Worker, batch_worker: Process
) -> None:
    bodies = [
        {"model": "tiny-llm", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0},
        {"model": "tiny-llm", "prompt": ["The sky is", "Water is"], "max_tokens": 5, "temperature": 0},
    ]
    lines = [request(f"cmpl-{i}", "/v1/completions", body) for i, body in enumerate(bodies)]
    batch = run_batch(client, lines, "/v1/completions")
    assert batch.status == "completed", batch
    output = by_custom_id(read_lines(client, batch.output_file_id))
    for line in lines:
        answer = output[line["custom_id"]]["response"]["body"]
        interactive = client.completions.with_raw_response.create(**line["body"]).http_response.json()
        assert answer["object"] == "text_completion"
        assert [c["text"] for c in answer["choices"]] == [c["text"] for c in interactive["choices"]]
        assert answer["choices"] == interactive["choices"]
        assert answer["usage"] == interactive["usage"]


def test_embeddings_batch_equals_interactive(client: OpenAI, minilm: Worker, batch_worker: Process) -> None:
    bodies = [
        {"model": "minilm", "input": "A man is eating food."},
        {"model": "minilm", "input": ["A man is eating pasta.", "The stock market fell."]},
        {"model": "minilm", "input": "Short", "dimensions": 8},
    ]
    lines = [request(f"emb-{i}", "/v1/embeddings", body) for i, body in enumerate(bodies)]
    batch = run_batch(client, lines, "/v1/embeddings")
    assert batch.status == "completed", batch
    output = by_custom_id(read_lines(client, batch.output_file_id))
    for line in lines:
        answer = output[line["custom_id"]]["response"]["body"]
        interactive = client.embeddings.create(**line["body"], encoding_format="float")
        assert answer["object"] == "list" and answer["model"] == "minilm"
        assert answer["usage"] == interactive.usage.model_dump()
        assert len(answer["data"]) == len(interactive.data)
        for mine, theirs in zip(answer["data"], interactive.data, strict=True):
            # Encoders batch requests together; padding moves the last float digits.
            assert mine["embedding"] == pytest.approx(theirs.embedding, abs=1e-5)
            assert len(mine["embedding"]) == len(theirs.embedding)


# --------------------------------------------------------- the error file


def test_bad_lines_land_in_the_error_file(client: OpenAI, tiny_llm: Worker, batch_worker: Process) -> None:
    chat = "/v1/chat/completions"
    ok = {
        "model": "tiny-llm",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    lines = [
        request("good-1", chat, ok),
        request("unknown-model", chat, {**ok, "model": "no-such-model"}),
        request("no-messages", chat, {"model": "tiny-llm", "max_tokens": 4}),
        request("bad-temperature", chat, {**ok, "temperature": 7}),
        request(
            "too-big", chat, {**ok, "messages": [{"role": "user", "content": "x" * (MAX_LINE_BYTES + 10)}]}
        ),
        request("over-context", chat, {**ok, "max_tokens": 10_000_000}),
        request("wrong-url", "/v1/embeddings", {"model": "tiny-llm", "input": "hi"}),
        request("embedding-model", chat, {**ok, "model": "minilm"}),
        request("streamed", chat, {**ok, "stream": True}),
        request("good-2", chat, {**ok, "max_tokens": 3}),
    ]
    batch = run_batch(client, lines, chat)
    assert batch.status == "completed", batch
    assert batch.request_counts.total == len(lines)
    assert batch.request_counts.completed == 2
    assert batch.request_counts.failed == len(lines) - 2
    output = by_custom_id(read_lines(client, batch.output_file_id))
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    assert sorted(output) == ["good-1", "good-2"]
    assert not set(output) & set(errors)
    assert set(output) | set(errors) == {line["custom_id"] for line in lines}
    expected = {
        "unknown-model": (404, "model_not_found"),
        "no-messages": (400, None),
        "bad-temperature": (400, None),
        "too-big": (413, None),
        "over-context": (400, "context_length_exceeded"),
        "wrong-url": (400, None),
        "embedding-model": (400, None),
        "streamed": (400, None),
    }
    for custom_id, (status, code) in expected.items():
        response = errors[custom_id]["response"]
        assert response["status_code"] == status, errors[custom_id]
        detail = response["body"]["error"]
        assert detail["message"] and detail["type"]
        if code is not None:
            assert detail["code"] == code, detail
    assert "messages" in errors["no-messages"]["response"]["body"]["error"]["message"]
    assert "temperature" in errors["bad-temperature"]["response"]["body"]["error"]["message"]
    assert str(MAX_LINE_BYTES) in errors["too-big"]["response"]["body"]["error"]["message"]


# ------------------------------------------------------- cancel and expiry


def slow_chat_lines(count: int, max_tokens: int = 48) -> list[dict[str, Any]]:
    body = {
        "model": "tiny-llm",
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    return [request(f"slow-{i}", "/v1/chat/completions", body) for i in range(count)]


def test_cancel_keeps_partial_output(client: OpenAI, tiny_llm: Worker, batch_worker: Process) -> None:
    lines = slow_chat_lines(60)
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while True:
        seen = client.batches.retrieve(batch.id)
        if seen.request_counts and seen.request_counts.completed >= 2:
            break
        assert time.monotonic() < deadline, f"no line finished: {seen}"
        time.sleep(0.1)
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at
    done = wait_batch(client, batch.id, 60)
    assert done.status == "cancelled", done
    assert done.cancelled_at and done.completed_at is None
    output = by_custom_id(read_lines(client, done.output_file_id))
    assert 2 <= len(output) < len(lines)
    assert done.request_counts.completed == len(output)
    assert done.request_counts.failed == 0 and done.error_file_id is None
    assert all(line["response"]["status_code"] == 200 for line in output.values())
    # A cancelled batch is final: cancelling again is a no-op, not an error.
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_expired_batch_keeps_partial_output(client: OpenAI, tiny_llm: Worker, batch_worker: Process) -> None:
    # 60 x 400 tokens at the batch cap of 2 lines: far longer than the 6 s window on any machine.
    lines = slow_chat_lines(60, max_tokens=400)
    # The first chunk answers one token per line: some output exists whatever the machine's speed.
    for line in lines[:4]:
        line["body"] = {**line["body"], "max_tokens": 1}
    batch = client.batches.create(
        input_file_id=upload(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="6s",  # type: ignore[arg-type]
    )
    done = wait_batch(client, batch.id, 60)
    assert done.status == "expired", done
    assert done.expired_at and done.expired_at >= done.expires_at
    output = by_custom_id(read_lines(client, done.output_file_id))
    errors = by_custom_id(read_lines(client, done.error_file_id))
    assert 0 < len(output) < len(lines)
    assert not set(output) & set(errors)
    assert set(output) | set(errors) == {line["custom_id"] for line in lines}
    for line in errors.values():
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired"
    assert done.request_counts.completed == len(output)
    assert done.request_counts.failed == len(errors)


# ---------------------------------------------------------------- the API


def test_upload_validation_names_the_first_bad_line(client: OpenAI, stack: Stack) -> None:
    good = request("a", "/v1/chat/completions", {"model": "m", "messages": []})
    cases = {
        b"not json\n": "line 1 is not valid JSON",
        jsonl([good]) + b"[1, 2]\n": "line 2 must be a JSON object",
        jsonl([good, {**good, "custom_id": "b", "method": "GET"}]): "line 2: 'method'",
        jsonl([good, {**good, "custom_id": "b", "url": "/v1/images"}]): "line 2: url '/v1/images'",
        jsonl([good, {**good, "custom_id": "b"}, good]): "line 3: custom_id 'a' is already used on line 1",
        jsonl([good, {k: v for k, v in good.items() if k != "body"} | {"custom_id": "c"}]): "line 2: 'body'",
        b"": "the file is empty",
        jsonl([good]) + b"\n\n": "line 2 is empty",
    }
    for content, message in cases.items():
        with pytest.raises(openai.BadRequestError) as caught:
            client.files.create(file=("input.jsonl", io.BytesIO(content)), purpose="batch")
        error = caught.value.body
        assert isinstance(error, dict) and message in error["message"], (content, error)
        assert caught.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("input.jsonl", io.BytesIO(jsonl([good]))), purpose="fine-tune")
    assert "purpose" in str(caught.value)


def test_file_limits(stack: Stack, tmp_path: Any) -> None:
    """The size and line limits, on a router whose batch settings are small."""
    from harness.processes import Process
    from harness.stack import BIN

    env = {
        **stack._service_env(),
        "INFERGATE_BIND": "127.0.0.1:0",
        "INFERGATE_REGISTRY_URL": stack.registry_url,
        "INFERGATE_BATCH_MAX_FILE_BYTES": "2048",
        "INFERGATE_BATCH_MAX_LINES": "3",
        "INFERGATE_WORKERS": "1",
    }
    from harness.ports import free_port

    port = free_port()
    env["INFERGATE_BIND"] = f"127.0.0.1:{port}"
    router = Process(
        "router-limits",
        [
            str(BIN / "gunicorn"),
            "--config",
            "python:infergate_router.gunicorn_conf",
            "infergate_router.wsgi:app",
        ],
        tmp_path / "router.log",
        env=env,
    )
    try:
        router.wait_http_ok(f"http://127.0.0.1:{port}/")
        small = OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="unused", max_retries=0)
        line = request("x", "/v1/embeddings", {"model": "m", "input": "y" * 600})
        four = [{**line, "custom_id": str(i)} for i in range(4)]
        with pytest.raises(openai.BadRequestError) as caught:
            small.files.create(file=("f.jsonl", io.BytesIO(jsonl(four[:3]) + b"z" * 400)), purpose="batch")
        assert "size limit of 2048 bytes" in str(caught.value)
        short = [request(str(i), "/v1/embeddings", {"model": "m", "input": "y"}) for i in range(4)]
        with pytest.raises(openai.BadRequestError) as caught:
            small.files.create(file=("f.jsonl", io.BytesIO(jsonl(short))), purpose="batch")
        assert "more than 3 lines" in str(caught.value)
        with pytest.raises(openai.APIStatusError) as too_large:
            small.files.create(file=("f.jsonl", io.BytesIO(b"x" * 200_000)), purpose="batch")
        assert too_large.value.status_code == 413
        assert small.files.create(file=("f.jsonl", io.BytesIO(jsonl(short[:3]))), purpose="batch").bytes > 0
    finally:
        stop_all([router])


def test_files_and_batches_routes(client: OpenAI, stack: Stack, batch_worker: Process) -> None:
    lines = [request(f"r{i}", "/v1/embeddings", {"model": "nothing-here", "input": "x"}) for i in range(3)]
    content = jsonl(lines)
    created = client.files.create(file=("mine.jsonl", io.BytesIO(content)), purpose="batch")
    assert created.object == "file" and created.purpose == "batch" and created.filename == "mine.jsonl"
    assert created.bytes == len(content) and created.id.startswith("file-")
    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert client.files.content(created.id).content == content
    assert created.id in [f.id for f in client.files.list(purpose="batch")]

    ids = []
    for i in range(3):
        batch = client.batches.create(
            input_file_id=created.id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            metadata={"run": str(i)},
        )
        assert batch.object == "batch" and batch.metadata == {"run": str(i)}
        assert batch.expires_at == batch.created_at + 24 * 3600
        ids.append(batch.id)
    # Newest first, two per page, the SDK following ``after``.
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    listed = [b.id for b in client.batches.list(limit=2)]
    assert listed[:3] == ids[::-1]
    for batch_id in ids:
        done = wait_batch(client, batch_id)
        assert done.status == "completed" and done.request_counts.failed == 3
    assert client.files.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")

    bad = {
        "input_file_id": "file-missing",
        "endpoint": "/v1/embeddings",
        "completion_window": "24h",
    }
    url = f"{stack.openai_url}/batches"
    answer = requests.post(url, json=bad, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "file_not_found"
    for field, value in (("endpoint", "/v1/images"), ("completion_window", "forever")):
        answer = requests.post(url, json={**bad, field: value}, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == field
    answer = requests.post(url, data="{", headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 400 and "error" in answer.json()
    done = client.batches.retrieve(ids[0])
    with pytest.raises(openai.APIStatusError) as caught:
        client.batches.cancel(done.id)
    assert caught.value.status_code == 409
    output = json.loads(client.files.content(done.error_file_id).text.splitlines()[0])
    assert output["response"]["status_code"] == 404


def test_input_of_a_running_batch_is_kept(client: OpenAI, tiny_llm: Worker, batch_worker: Process) -> None:
    file_id = upload(client, slow_chat_lines(30))
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.delete(file_id)
    assert batch.id in str(caught.value)
    client.batches.cancel(batch.id)
    assert wait_batch(client, batch.id, 60).status == "cancelled"
    assert client.files.delete(file_id).deleted
