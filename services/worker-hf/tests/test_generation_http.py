"""Generation through a real worker-hf process over HTTP, with streams
read from the real Redis the worker writes to."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from generation_fixtures import read_stream
from harness.redis_server import RedisServer
from hf_worker_process import HFWorker

from infergate_common.streams import DEFAULT_PREFIX, DeltaEvent, DoneEvent, ErrorEvent, HeartbeatEvent
from infergate_worker_hf.generation.detokenizer import REPLACEMENT

StartWorker = Callable[..., HFWorker]
GREEDY = {"temperature": 0, "max_tokens": 40, "ignore_eos": True}


@pytest.fixture(scope="module")
def llama(models: Path, hf_worker: StartWorker) -> HFWorker:
    return hf_worker(models / "tiny-llama")


@pytest.fixture(scope="module")
def llama_one_at_a_time(models: Path, hf_worker: StartWorker) -> HFWorker:
    return hf_worker(models / "tiny-llama", "--max_num_seqs", "1")


def body(prompt: Any = "Hello, my dog", stream: bool = False, **params: Any) -> dict[str, Any]:
    key = "messages" if isinstance(prompt, list) else "prompt"
    return {"request_id": uuid.uuid4().hex, key: prompt, "params": params, "stream": stream}


def complete(worker: HFWorker, prompt: Any = "Hello, my dog", **params: Any) -> dict[str, Any]:
    response = worker.post("/generate", body(prompt, **params))
    assert response.status_code == 200, response.text
    return dict(response.json())


def start_stream(worker: HFWorker, prompt: Any = "Hello, my dog", **params: Any) -> str:
    request = body(prompt, stream=True, **params)
    response = worker.post("/generate", request)
    assert response.status_code == 202, response.text
    assert response.json()["stream_key"] == f"{DEFAULT_PREFIX}:stream:{request['request_id']}"
    return str(request["request_id"])


def stream(
    redis_server: RedisServer, request_id: str, timeout_s: float = 30, into: list[Any] | None = None
) -> list[Any]:
    return read_stream(redis_server.client(), DEFAULT_PREFIX, request_id, timeout_s, into)


def joined(events: list[Any], index: int = 0) -> str:
    return "".join(e.text for e in events if isinstance(e, DeltaEvent) and e.index == index)


def check_stream_shape(events: list[Any], choices: int) -> None:
    finals = [e for e in events if isinstance(e, (DoneEvent, ErrorEvent))]
    assert len(finals) == 1 and events[-1] is finals[0]
    for index in range(choices):
        deltas = [e for e in events if isinstance(e, DeltaEvent) and e.index == index]
        # finish_reason only on the last delta of each choice.
        assert deltas[-1].finish_reason is not None
        assert all(d.finish_reason is None for d in deltas[:-1])
        # Never half a character at the end of a delta that more text follows.
        assert not any(d.text.endswith(REPLACEMENT) for d in deltas[:-1])


def test_stream_equals_json_at_temperature_zero(llama: HFWorker, redis_server: RedisServer) -> None:
    expected = complete(llama, "日本語 and 🙂", **GREEDY)
    events = stream(redis_server, start_stream(llama, "日本語 and 🙂", **GREEDY))
    check_stream_shape(events, 1)
    assert joined(events) == expected["choices"][0]["text"]
    deltas = [e for e in events if isinstance(e, DeltaEvent)]
    assert sum(d.tokens for d in deltas) == expected["usage"]["completion_tokens"] == 40
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert done.finish_reasons == {"0": "length"}
    assert done.usage.model_dump() == expected["usage"]


def test_stream_n_choices_with_seed_and_logprobs(llama: HFWorker, redis_server: RedisServer) -> None:
    params = {"n": 2, "temperature": 1.0, "seed": 4, "max_tokens": 12, "ignore_eos": True, "logprobs": 1}
    expected = complete(llama, **params)
    events = stream(redis_server, start_stream(llama, **params))
    check_stream_shape(events, 2)
    for choice in expected["choices"]:
        assert joined(events, choice["index"]) == choice["text"]
        streamed = [
            entry
            for e in events
            if isinstance(e, DeltaEvent) and e.index == choice["index"]
            for entry in e.logprobs or []
        ]
        assert [e.token for e in streamed] == [e["token"] for e in choice["logprobs"]]
    assert events[-1].usage.completion_tokens == 24


def test_stream_holds_back_a_stop_string(llama: HFWorker, redis_server: RedisServer) -> None:
    full = complete(llama, **GREEDY)["choices"][0]["text"]
    stop = next(
        full[i : i + 3]
        for i in range(5, len(full) - 3)
        if REPLACEMENT not in full[i : i + 3] and full[i : i + 3].strip()
    )
    expected = complete(llama, stop=[stop], **GREEDY)["choices"][0]
    assert expected["finish_reason"] == "stop" and expected["text"] == full[: full.index(stop)]
    events = stream(redis_server, start_stream(llama, stop=[stop], **GREEDY))
    check_stream_shape(events, 1)
    assert joined(events) == expected["text"]
    assert events[-1].finish_reasons == {"0": "stop"}


def test_stream_echo_sends_the_prompt_first(llama: HFWorker, redis_server: RedisServer) -> None:
    events = stream(redis_server, start_stream(llama, "Hello, my dog", echo=True, **GREEDY))
    first = next(e for e in events if isinstance(e, DeltaEvent))
    assert first.text.startswith("Hello, my dog")
    assert joined(events) == "Hello, my dog" + complete(llama, **GREEDY)["choices"][0]["text"]


def test_chat_over_http(llama: HFWorker, models: Path, hf_worker: StartWorker) -> None:
    chat = complete(llama, [{"role": "user", "content": "Hi!"}], temperature=0, max_tokens=4)
    assert chat["choices"][0]["completion_tokens"] <= 4
    gpt2 = hf_worker(models / "tiny-gpt2")
    response = gpt2.post("/generate", body([{"role": "user", "content": "Hi!"}], max_tokens=4))
    assert response.status_code == 400
    assert "chat template" in response.json()["error"]["message"]
    assert gpt2.info()["chat_template"] is False
    assert llama.info()["chat_template"] is True


def test_errors_answer_before_streaming(llama: HFWorker) -> None:
    too_long = llama.post("/generate", body(stream=True, max_tokens=4000))
    assert too_long.status_code == 400
    message = too_long.json()["error"]["message"]
    assert "1024" in message and "4000" in message


def test_queued_stream_heartbeats_and_cancel_frees_the_slot(
    llama_one_at_a_time: HFWorker, redis_server: RedisServer
) -> None:
    worker = llama_one_at_a_time
    assert worker.info()["extra"]["max_num_seqs"] == 1
    long_id = start_stream(worker, temperature=0, max_tokens=1000, ignore_eos=True)
    queued_id = start_stream(worker, temperature=0, max_tokens=5, ignore_eos=True)
    queued_events: list[Any] = []
    reader = threading.Thread(target=stream, args=(redis_server, queued_id, 30, queued_events))
    reader.start()
    deadline = time.monotonic() + 20
    while not any(isinstance(e, HeartbeatEvent) for e in queued_events):
        assert time.monotonic() < deadline, "no heartbeat while queued"
        time.sleep(0.05)
    # Queued behind the long request: heartbeats only, no tokens yet.
    assert not any(isinstance(e, DeltaEvent) for e in queued_events)
    cancelled_at = time.monotonic()
    response = worker.post(f"/cancel/{long_id}", {})
    assert response.json() == {"cancelled": True}
    reader.join(30)
    long_events = stream(redis_server, long_id)
    done = long_events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reasons == {"0": "abort"}
    assert done.usage.completion_tokens < 1000
    check_stream_shape(long_events, 1)
    assert isinstance(queued_events[-1], DoneEvent)
    assert queued_events[-1].finish_reasons == {"0": "length"}
    # The slot was freed at the next token: the queued request ran at once.
    assert time.monotonic() - cancelled_at < 5
    assert worker.post(f"/cancel/{long_id}", {}).json() == {"cancelled": False}


def test_t5_over_http(models: Path, hf_worker: StartWorker, redis_server: RedisServer) -> None:
    t5 = hf_worker(models / "tiny-t5")
    info = t5.info()
    assert info["task"] == "text2text_generation" and info["encoder_decoder"] is True
    expected = complete(t5, "translate: we are making words", **GREEDY)
    assert expected["choices"][0]["completion_tokens"] == 40
    events = stream(redis_server, start_stream(t5, "translate: we are making words", **GREEDY))
    check_stream_shape(events, 1)
    assert joined(events) == expected["choices"][0]["text"]
    echo = t5.post("/generate", body("translate: hi", echo=True, max_tokens=4))
    assert echo.status_code == 400
    assert "encoder-decoder" in echo.json()["error"]["message"]
