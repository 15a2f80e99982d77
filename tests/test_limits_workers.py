"""Workers under requests that used to end them, and the limits they keep
themselves (the batch worker and other internal callers reach them
directly); ``logit_bias`` on worker-hf through the router."""

from __future__ import annotations

import resource
import socket
import threading
import time
from typing import Any

import requests
from harness.stack import Stack, Worker

PROMPT = "Once upon a time"


def generate_direct(worker: Worker, body: dict[str, Any], timeout: float = 60) -> requests.Response:
    return requests.post(f"{worker.url}/generate", json=body, headers=worker.headers, timeout=timeout)


def completion(stack: Stack, timeout: float = 120, **body: Any) -> requests.Response:
    return requests.post(
        f"{stack.openai_url}/completions",
        json={"model": "tiny-llm", "prompt": PROMPT, **body},
        timeout=timeout,
    )


def still_serving(stack: Stack, worker: Worker) -> None:
    assert worker.process.alive(), "the worker exited"
    response = completion(stack, max_tokens=3, temperature=0)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3


# ------------------------------------------------------ requests that crashed


def test_five_thousand_prompts_are_refused_and_the_worker_serves_on(stack: Stack, tiny_llm: Worker) -> None:
    started = time.monotonic()
    response = completion(stack, prompt=[f"story {i}" for i in range(5000)], max_tokens=16, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "limit_exceeded" and "max_prompts" in error["message"]
    assert time.monotonic() - started < 10
    still_serving(stack, tiny_llm)


def test_a_burst_of_connections_past_1024_descriptors_does_not_end_the_worker(
    stack: Stack, tiny_llm: Worker
) -> None:
    """The cause of the 5,000-prompt exit: waitress polled its sockets with
    select(), which raises once a descriptor passes 1024, and the worker
    took that for a shutdown (exit status 0, no log line)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 1400, f"this test needs 1,400 open files; the hard limit is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    host, port = tiny_llm.url.removeprefix("http://").split(":")
    sockets: list[socket.socket] = []
    try:
        for _ in range(1200):
            sockets.append(socket.create_connection((host, int(port)), timeout=10))
        # A request on one of them: the worker must still poll them all.
        sockets[-1].sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        sockets[-1].settimeout(30)
        assert sockets[-1].recv(64).startswith(b"HTTP/1.1 200")
        still_serving(stack, tiny_llm)
    finally:
        for sock in sockets:
            sock.close()
    still_serving(stack, tiny_llm)


def test_deep_json_to_a_worker_is_a_400(tiny_llm: Worker) -> None:
    body = '{"request_id": "deep", "prompt": "x", "params": ' + "[" * 100000 + "]" * 100000 + "}"
    response = requests.post(
        f"{tiny_llm.url}/generate",
        data=body,
        headers={**tiny_llm.headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert "too deeply" in response.json()["error"]["message"]


# ------------------------------------------------- limits the worker keeps


def test_the_worker_keeps_the_generation_limits(tiny_llm: Worker) -> None:
    def error(params: dict[str, Any]) -> dict[str, Any]:
        response = generate_direct(tiny_llm, {"request_id": "lim", "prompt": "x", "params": params})
        assert response.status_code == 400, response.text
        return dict(response.json()["error"])

    assert "max_stop_sequences" in error({"stop": [f"s{i}" for i in range(17)]})["message"]
    assert "max_stop_length" in error({"stop": ["x" * 257]})["message"]
    assert "max_logit_bias" in error({"logit_bias": {str(i): 1 for i in range(301)}})["message"]
    assert "between -100 and 100" in error({"logit_bias": {"1": 150}})["message"]
    assert "seed" in error({"seed": 2**64})["message"]
    vocab = error({"logit_bias": {"10000000": 5}})
    assert vocab["param"] == "logit_bias" and "out of the vocabulary" in vocab["message"]


def test_the_worker_keeps_the_encode_input_limit(minilm: Worker) -> None:
    body = {"request_id": "many", "inputs": ["x"] * 2049}
    response = requests.post(f"{minilm.url}/encode", json=body, headers=minilm.headers, timeout=60)
    assert response.status_code == 400, response.text
    assert "max_encode_inputs" in response.json()["error"]["message"]


# --------------------------------------------------------------- logit_bias


def _token_id(worker: Worker, text: str) -> int:
    response = requests.post(
        f"{worker.url}/tokenize",
        json={"prompt": text, "add_special_tokens": False},
        headers=worker.headers,
        timeout=30,
    )
    response.raise_for_status()
    return int(response.json()["tokens"][-1])


def _text_of(worker: Worker, ids: list[int]) -> str:
    response = requests.post(
        f"{worker.url}/detokenize", json={"tokens": ids}, headers=worker.headers, timeout=30
    )
    response.raise_for_status()
    return str(response.json()["prompt"])


def test_logit_bias_forces_a_token_on_worker_hf_inside_the_batch(stack: Stack, tiny_llm: Worker) -> None:
    greedy = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    plain = completion(stack, **greedy)
    assert plain.status_code == 200, plain.text
    plain_text = plain.json()["choices"][0]["text"]
    forced_id = _token_id(tiny_llm, " castle")
    results: dict[str, requests.Response] = {}

    def run(name: str, **body: Any) -> None:
        results[name] = completion(stack, **greedy, **body)

    # Side by side, so the biased and the plain sequence share the running batch.
    threads = [
        threading.Thread(target=run, args=("forced",), kwargs={"logit_bias": {str(forced_id): 100}}),
        threading.Thread(target=run, args=("plain",)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["forced"].status_code == 200, results["forced"].text
    assert results["forced"].json()["choices"][0]["text"] == _text_of(tiny_llm, [forced_id] * 6)
    assert results["plain"].json()["choices"][0]["text"] == plain_text
