"""vLLM's cancellation test, through the router on worker-hf: 200 long
streaming requests abandoned by their clients after 0.5 s, then a 10-token
request must finish within 5 s, and the worker must hold nothing (every
abandoned generation cancelled). worker-vllm's version is in
``test_vllm_serving.py``. Non-streaming generations are cancelled too when
their client leaves or their timeout passes."""

from __future__ import annotations

import time
from pathlib import Path

import requests
from conftest import worker_hf
from harness.abandon import abandon_streams
from harness.stack import Stack, Worker

ABANDONED = 200


def held(worker: Worker) -> int:
    return int(requests.get(f"{worker.url}/info", timeout=10).json()["extra"]["held"])


def wait_idle(worker: Worker, timeout_s: float) -> float:
    started = time.monotonic()
    while held(worker) > 0:
        assert time.monotonic() - started < timeout_s, f"{worker.url} still holds {held(worker)} requests"
        time.sleep(0.05)
    return time.monotonic() - started


def test_abandoned_streams_free_the_worker(stack: Stack, tiny_llm: Worker) -> None:
    long_body = {
        "model": "tiny-llm",
        "prompt": "Once upon a time",
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    abandoned_at = time.monotonic()
    statuses = abandon_streams(f"{stack.openai_url}/completions", long_body, ABANDONED, after_s=0.5)
    # Clients gave up (0), or were told the model is full (429): nothing ran to its end.
    assert set(statuses) <= {0, 429}, sorted(set(statuses))

    started = time.monotonic()
    response = requests.post(
        f"{stack.openai_url}/completions",
        json={"model": "tiny-llm", "prompt": "Hello", "max_tokens": 10, "ignore_eos": True},
        timeout=30,
    )
    short_s = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 10
    assert short_s < 5, f"the short request took {short_s:.1f}s after the storm"
    idle_s = wait_idle(tiny_llm, timeout_s=15)
    print(
        f"\ncancellation storm (worker-hf): short request {short_s:.2f}s, "
        f"worker idle {time.monotonic() - abandoned_at:.2f}s after the storm began ({idle_s:.2f}s after it)"
    )


def test_non_streaming_client_that_leaves_cancels_its_generation(stack: Stack, tiny_llm: Worker) -> None:
    # 16 choices of 900 tokens: seconds of work, abandoned after 0.3 s.
    body = {"model": "tiny-llm", "prompt": "Once upon a time", "max_tokens": 900, "n": 16, "ignore_eos": True}
    gave_up_at = time.monotonic()
    try:
        requests.post(f"{stack.openai_url}/completions", json=body, timeout=0.3)
    except requests.Timeout:
        pass
    else:
        raise AssertionError("16 x 900 tokens came back within 0.3 s: the test proves nothing")
    # The router saw the connection close and cancelled the generation.
    wait_idle(tiny_llm, timeout_s=5)
    assert time.monotonic() - gave_up_at < 6


def test_non_streaming_timeout_cancels_its_generation(tmp_path: Path, test_models: Path) -> None:
    own = Stack(tmp_path / "stack", router_env={"INFERGATE_REQUEST_TIMEOUT_S": "0.3"})
    own.start()
    try:
        worker = own.start_worker("slow-llm", worker_hf("slow-llm", test_models / "tiny-llama"))
        body = {
            "model": "slow-llm",
            "prompt": "Once upon a time",
            "max_tokens": 900,
            "n": 16,
            "ignore_eos": True,
        }
        response = requests.post(f"{own.openai_url}/completions", json=body, timeout=30)
        assert response.status_code == 504, response.text
        assert response.json()["error"]["type"] == "timeout_error"
        wait_idle(worker, timeout_s=5)
    finally:
        own.stop()
