"""worker-vllm behind the real router: the small random Llama on vLLM's CPU
engine, started once for this module (about 30 s). Random weights, so the
tests check mechanics (counts, stops, seeds, streaming, cancellation), not
prose. The engine-death test kills the engine (and so the worker), so it
runs last."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from harness.abandon import abandon_streams
from harness.core_pinning import is_engine, split_cpus, tree
from harness.ports import free_port
from harness.stack import Stack, Worker

from infergate_common.streams import decode_event, deltas_in_order

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
NAME = "vllm-llama"
# Above the model's own 1024 (KServe's ALLOW_LONG_MAX_MODEL_LEN escape), so a
# long generation outlasts the cancel and kill tests on a fast machine too.
MAX_MODEL_LEN = 8192
# An explicit KV cache skips vLLM's memory profiling on the CPU (faster start, less memory).
KV_CACHE_BYTES = str(256 * 1024 * 1024)
# The worker's Prometheus metrics port.
METRICS_PORT = free_port()


def vllm_worker_cmd(name: str, model_dir: Path, *flags: str) -> list[str]:
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run ci/setup_vllm.sh")
    return [
        str(VLLM_PYTHON), "-m", "infergate_worker_vllm",
        "--model_name", name, "--model_id", str(model_dir), *flags,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def vllm_llama(stack: Stack, test_models: Path) -> Iterator[Worker]:
    cmd = vllm_worker_cmd(
        NAME, test_models / "tiny-llama",
        "--max_model_len", str(MAX_MODEL_LEN), "--kv-cache-memory-bytes", KV_CACHE_BYTES,
        "--exit_after_engine_death_s", "3", "--metrics_bind", f"127.0.0.1:{METRICS_PORT}",
    )  # fmt: skip
    worker = stack.start_worker(NAME, cmd, env={"ALLOW_LONG_MAX_MODEL_LEN": "1"}, timeout_s=300)
    yield worker
    stack.stop_worker(worker)


@pytest.fixture(scope="module")
def client(stack: Stack, vllm_llama: Worker) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0, timeout=60)


def prompt_tokens(worker: Worker, prompt: str) -> int:
    response = requests.post(
        f"{worker.url}/tokenize", json={"prompt": prompt}, headers=worker.headers, timeout=10
    )
    response.raise_for_status()
    return int(response.json()["count"])


def unfinished_requests(worker: Worker) -> int:
    return int(requests.get(f"{worker.url}/info", timeout=10).json()["extra"]["unfinished_requests"])


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not {what} after {timeout_s}s")


def sse_events(response: requests.Response) -> Iterator[Any]:
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)


# ------------------------------------------------------------------ metadata


@pytest.mark.isolated
def test_abandoned_streams_free_the_engine(stack: Stack, vllm_llama: Worker) -> None:
    """vLLM's own cancellation test through the router: 200 long streams
    abandoned after 0.5 s, then a 10-token request within 5 s, and the
    engine holds nothing. ci/test.sh runs it in a session of its own: after
    the other vLLM suites in the same session the same storm once took
    13-30 s, before the harness gave the engine cores of its own (then
    0.36 and 0.43 s; docs/resilience.md)."""
    body = {
        "model": NAME, "prompt": "hello", "max_tokens": MAX_MODEL_LEN - 8, "ignore_eos": True,
        "stream": True,
    }  # fmt: skip
    statuses = abandon_streams(f"{stack.openai_url}/completions", body, 200, after_s=0.5)
    assert set(statuses) <= {0, 429}, sorted(set(statuses))
    started = time.monotonic()
    response = requests.post(
        f"{stack.openai_url}/completions",
        json={"model": NAME, "prompt": "hello", "max_tokens": 10, "ignore_eos": True},
        timeout=30,
    )
    short_s = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 10
    assert short_s < 5, f"the short request took {short_s:.1f}s after the storm"
    wait_for(lambda: unfinished_requests(vllm_llama) == 0, 15, "freed in the engine")
    held = requests.get(f"{vllm_llama.url}/info", timeout=10).json()["extra"]["held"]
    assert held == 0
    print(f"\ncancellation storm (worker-vllm): short request {short_s:.2f}s")


def test_the_engine_runs_on_cores_of_its_own(vllm_llama: Worker) -> None:
    """The harness's layout (harness/core_pinning.py): vLLM's engine core
    and model worker on every CPU but the last, the worker's own process
    (its event loop writes the token streams) left on every CPU."""
    split = split_cpus()
    if split is None:
        pytest.fail("the layout needs 2 CPUs; this machine allows one")
    engine_cpus, _ = split
    everything = os.sched_getaffinity(0)
    engines = [pid for pid in tree(vllm_llama.process.pid) if is_engine(pid)]
    assert len(engines) == 2, engines  # VLLM::EngineCore and VLLM::Worker
    for pid in engines:
        threads = os.listdir(f"/proc/{pid}/task")
        assert {frozenset(os.sched_getaffinity(int(tid))) for tid in threads} == {frozenset(engine_cpus)}
    assert os.sched_getaffinity(vllm_llama.process.pid) == everything


def test_models_show_the_vllm_backend_and_why(stack: Stack, vllm_llama: Worker) -> None:
    models = requests.get(f"{stack.openai_url}/models", timeout=10).json()["data"]
    entry = next(model for model in models if model["id"] == NAME)
    assert entry["backend"] == "vllm"
    assert "auto" in entry["backend_reason"] and "LlamaForCausalLM" in entry["backend_reason"]
    info = requests.get(f"{vllm_llama.url}/info", timeout=10).json()
    assert info["backend"] == "vllm"
    assert info["backend_reason"] == entry["backend_reason"]
    assert (info["device"], info["dtype"], info["max_model_len"]) == ("cpu", "float32", MAX_MODEL_LEN)
    assert info["chat_template"] is True
    assert info["extra"]["tensor_parallel_size"] == 1


# --------------------------------------------------------------- completions


def test_completion_with_exact_usage(client: openai.OpenAI, vllm_llama: Worker) -> None:
    prompt = "The quick brown fox"
    completion = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == prompt_tokens(vllm_llama, prompt)
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 8


def test_greedy_is_deterministic_and_streaming_matches(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": NAME, "prompt": "hello", "max_tokens": 12, "temperature": 0}
    first = client.completions.create(**kwargs).choices[0].text
    assert client.completions.create(**kwargs).choices[0].text == first
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == first


def test_seeds_repeat_and_differ(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(
            model=NAME, prompt="once upon", max_tokens=16, temperature=1.0, seed=seed,
            extra_body={"ignore_eos": True},
        ).choices[0].text  # fmt: skip

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_n_choices_and_usage(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=NAME, prompt="hello", n=3, max_tokens=5, temperature=1.0, seed=1,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert sorted(choice.index for choice in completion.choices) == [0, 1, 2]
    assert all(choice.finish_reason == "length" for choice in completion.choices)
    assert completion.usage is not None and completion.usage.completion_tokens == 15


def test_stop_string_ends_the_text_before_it(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": NAME, "prompt": "abc", "max_tokens": 24, "temperature": 0}
    full = client.completions.create(extra_body={"ignore_eos": True}, **kwargs).choices[0].text
    visible = [i for i, ch in enumerate(full) if ch.isprintable() and not ch.isspace() and ch != "\ufffd"]
    assert len(visible) > 4, f"greedy text too short to pick a stop string from: {full!r}"
    stop = full[visible[3]]
    stopped = client.completions.create(stop=[stop], extra_body={"ignore_eos": True}, **kwargs).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(stop)]
    assert stop not in stopped.text


def test_logprobs(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=NAME, prompt="hello", max_tokens=6, temperature=0, logprobs=2,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.token_logprobs is not None
    assert len(logprobs.tokens) == 6
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs)
    assert logprobs.top_logprobs is not None
    for chosen, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert 1 <= len(top) <= 3
        # Greedy: the chosen token is the most likely one (several tokens of
        # the random model decode to the same text, so the map may hold fewer).
        assert chosen >= max(top.values()) - 1e-4


def test_echo_with_logprobs_returns_the_prompt_and_its_logprobs(
    client: openai.OpenAI, vllm_llama: Worker
) -> None:
    prompt = "hello world"
    completion = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=1,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = completion.choices[0]
    assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
    n_prompt = prompt_tokens(vllm_llama, prompt)
    assert len(choice.logprobs.token_logprobs) == n_prompt + 4
    # The first prompt token has no logprob; every later one has.
    assert choice.logprobs.token_logprobs[0] is None
    assert all(lp is not None for lp in choice.logprobs.token_logprobs[1:])
    assert choice.logprobs.text_offset is not None
    assert choice.logprobs.text_offset == sorted(choice.logprobs.text_offset)


def test_streamed_n_choices_end_with_their_own_finish_reason_and_usage(stack: Stack) -> None:
    body = {
        "model": NAME, "prompt": "hello", "n": 2, "max_tokens": 6, "temperature": 1.0, "seed": 3,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    with requests.post(f"{stack.openai_url}/completions", json=body, stream=True, timeout=60) as response:
        assert response.status_code == 200
        events = list(sse_events(response))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    finished: dict[int, int] = {}
    for position, chunk in enumerate(chunks):
        for choice in chunk["choices"]:
            if choice["finish_reason"] is not None:
                assert choice["index"] not in finished
                finished[choice["index"]] = position
            else:
                assert choice["index"] not in finished, "a chunk after the choice's finish"
    assert set(finished) == {0, 1}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12


def test_context_overflow_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=NAME, prompt="hello", max_tokens=MAX_MODEL_LEN)
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in str(caught.value)


# ---------------------------------------------------------------------- chat


def test_logit_bias_forces_a_token_and_is_checked_against_the_vocabulary(
    client: openai.OpenAI, vllm_llama: Worker
) -> None:
    ids = requests.post(
        f"{vllm_llama.url}/tokenize",
        json={"prompt": " castle", "add_special_tokens": False},
        headers=vllm_llama.headers,
        timeout=10,
    ).json()["tokens"]
    forced = ids[-1]
    expected = requests.post(
        f"{vllm_llama.url}/detokenize", json={"tokens": [forced] * 5}, headers=vllm_llama.headers, timeout=10
    ).json()
    greedy: dict[str, Any] = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}
    completion = client.completions.create(
        **greedy, logit_bias={str(forced): 100}, extra_body={"ignore_eos": True}
    )
    assert completion.choices[0].text == expected["prompt"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**greedy, logit_bias={"10000000": 5})
    assert "out of the vocabulary" in str(caught.value)


def test_chat_plain_and_streamed(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Say something."}]
    reply = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert len(choice.logprobs.content) == 8
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    stream = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens


# -------------------------------------------------------------- cancellation


def test_worker_metrics_carry_vllms_own_and_infergates(client: openai.OpenAI) -> None:
    """worker-vllm re-exports vLLM's Prometheus series and feeds infergate's
    worker series from vLLM's scheduler statistics."""
    client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=8, temperature=0)

    def scrape() -> str:
        return requests.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text

    wait_for(lambda: "vllm:generation_tokens_total" in scrape(), 30, "vLLM's own series")
    text = scrape()
    assert re.search(r'^vllm:num_requests_running\{[^}]*model_name="vllm-llama"', text, re.M)
    assert re.search(r"^vllm:kv_cache_usage_perc\{", text, re.M)
    assert f'infergate_worker_requests_waiting{{model="{NAME}"}}' in text
    queued = re.search(rf'^infergate_worker_queue_time_seconds_count{{model="{NAME}"}} (\S+)$', text, re.M)
    assert queued and float(queued.group(1)) >= 1
    assert f'infergate_worker_gpu_unusable{{model="{NAME}"}} 0.0' in text


def test_cancel_on_the_worker_aborts_the_request_in_the_engine(stack: Stack, vllm_llama: Worker) -> None:
    request_id = f"cancel-{uuid.uuid4().hex}"
    body = {
        "request_id": request_id, "prompt": "hello", "stream": True,
        "params": {"max_tokens": MAX_MODEL_LEN - 8, "ignore_eos": True},
    }  # fmt: skip
    accepted = requests.post(f"{vllm_llama.url}/generate", json=body, headers=vllm_llama.headers, timeout=10)
    assert accepted.status_code == 202
    key = accepted.json()["stream_key"]
    redis = stack.redis.client()
    wait_for(lambda: redis.xlen(key) >= 2, 30, "streaming")
    assert requests.post(
        f"{vllm_llama.url}/cancel/{request_id}", headers=vllm_llama.headers, timeout=10
    ).json() == {"cancelled": True}
    wait_for(lambda: unfinished_requests(vllm_llama) == 0, 5, "freed in the engine")
    ((_, last),) = redis.xrevrange(key, count=1)
    assert last["event"] == "done"
    done = json.loads(last["data"])
    assert done["finish_reasons"] == {"0": "abort"}
    assert done["usage"]["completion_tokens"] < MAX_MODEL_LEN - 8


def test_client_disconnect_cancels_through_the_router(stack: Stack, vllm_llama: Worker) -> None:
    body = {
        "model": NAME, "prompt": "hello", "max_tokens": MAX_MODEL_LEN - 8, "ignore_eos": True,
        "stream": True,
    }  # fmt: skip
    response = requests.post(f"{stack.openai_url}/completions", json=body, stream=True, timeout=60)
    lines = response.iter_lines()
    for line in lines:
        if line.startswith(b"data: "):
            break
    more = [next(lines) for _ in range(6)]
    assert unfinished_requests(vllm_llama) == 1, (line, more)
    response.close()
    wait_for(lambda: unfinished_requests(vllm_llama) == 0, 10, "freed in the engine")
    redis = stack.redis.client()
    ended = []
    for key in redis.scan_iter(f"{stack.prefix}:stream:*"):
        ((_, last),) = redis.xrevrange(key, count=1)
        ended.append(json.loads(last["data"]).get("finish_reasons"))
    assert {"0": "abort"} in ended


# ------------------------------------------------------- engine death (last)


def engine_core_pids(worker_pid: int) -> list[int]:
    """vLLM's EngineCore child processes of the worker (its process title)."""
    found = []
    for task in Path(f"/proc/{worker_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            comm = Path(f"/proc/{child}/comm").read_text().strip()
            if comm.startswith("VLLM::EngineCor"):
                found.append(int(child))
    return found


def test_redis_refusing_writes_mid_stream_aborts_the_generation(stack: Stack, vllm_llama: Worker) -> None:
    """The asyncio flavour of the stream writer: Redis full mid-stream, the
    writer gives up, the request is aborted in vLLM, and the client gets an
    error event (never [DONE]); deltas numbered 0, 1, 2, ... until then."""
    request_id = f"full-{uuid.uuid4().hex}"
    body = {
        "request_id": request_id, "prompt": "hello", "stream": True,
        "params": {"max_tokens": MAX_MODEL_LEN - 8, "ignore_eos": True},
    }  # fmt: skip
    accepted = requests.post(f"{vllm_llama.url}/generate", json=body, headers=vllm_llama.headers, timeout=10)
    assert accepted.status_code == 202
    key = accepted.json()["stream_key"]
    redis = stack.redis.client()
    wait_for(lambda: redis.xlen(key) >= 3, 30, "streaming")
    # In order, without a hole; on a stalled machine a write whose reply
    # came too late is retried and lands twice, which the reader drops.
    assert deltas_in_order(decode_event(fields) for _, fields in redis.xrange(key))
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", "1")
    try:
        wait_for(lambda: unfinished_requests(vllm_llama) == 0, 30, "aborted in the engine")
    finally:
        redis.config_set("maxmemory", "0")
    # Once Redis takes writes again, the stream is trimmed to its error entry.
    wait_for(lambda: [f["event"] for _, f in redis.xrange(key)] == ["error"], 10, "the error entry written")
    ((_, last),) = redis.xrevrange(key, count=1)
    error = json.loads(last["data"])
    assert error["status"] == 503 and "Redis is full" in error["message"]


def test_engine_killed_mid_stream_ends_the_stream_with_an_error(stack: Stack, vllm_llama: Worker) -> None:
    (core,) = engine_core_pids(vllm_llama.process.pid)
    body = {
        "model": NAME, "prompt": "hello", "max_tokens": MAX_MODEL_LEN - 8, "ignore_eos": True,
        "stream": True,
    }  # fmt: skip
    with requests.post(f"{stack.openai_url}/completions", json=body, stream=True, timeout=60) as response:
        events = sse_events(response)
        first = next(events)
        assert "choices" in first
        os.kill(core, signal.SIGKILL)
        rest = list(events)
    errors = [event for event in rest if isinstance(event, dict) and "error" in event]
    assert errors, f"no error event after the engine died: {rest[-3:]}"
    assert "[DONE]" not in rest
    ready = requests.get(f"{vllm_llama.url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert "engine died" in ready.json()["reason"]
    # A dead engine does not come back: the worker exits for its supervisor to restart it.
    vllm_llama.process.popen.wait(timeout=90)
