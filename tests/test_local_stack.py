"""`make run`'s stack (ci/stack.sh) as a user runs it: it serves the default
models, its banner's curl commands work, and Ctrl-C stops every process."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness.ports import free_port
from harness.sse import events

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


class LocalStack:
    def __init__(self, workdir: Path, script: str = "stack.sh", **settings: str) -> None:
        """``settings``: MODEL_ID and the like, as a user sets them (none: the default models)."""
        self.ports = {name: free_port() for name in ("PORT", "METRICS_PORT", "REDIS_PORT", "REGISTRY_PORT")}
        # Two consecutive free ports for the two workers.
        self.ports["WORKER_PORT"] = _free_pair()
        self.url = f"http://127.0.0.1:{self.ports['PORT']}"
        self.output = workdir / "stack.out"
        env = {
            **os.environ,
            **{k: str(v) for k, v in self.ports.items()},
            "STACK_DIR": str(workdir / "state"),
        }
        for name in ("MODEL_ID", "MODEL_NAME", "TASK", "BACKEND"):
            env.pop(name, None)
        env.update(settings)
        env["OMP_NUM_THREADS"] = "1"
        self._out = open(self.output, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["bash", str(ROOT / "ci" / script)],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for_banner(self, timeout_s: float = 300) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.text()
            if "infergate is serving at" in text:
                time.sleep(0.5)
                return self.text()
            assert self.process.poll() is None, f"stack.sh exited:\n{text[-4000:]}"
            time.sleep(0.5)
        raise AssertionError(f"no banner after {timeout_s}s:\n{self.text()[-4000:]}")

    def interrupt(self, timeout_s: float = 30) -> int:
        """What Ctrl-C does: SIGINT to the terminal's foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=timeout_s)

    def children(self) -> list[int]:
        """honcho's processes; each leads a session (and process group) of its own."""
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def kill(self) -> None:
        if self.process.poll() is None:
            children = self.children()
            try:
                self.interrupt(timeout_s=20)
            except subprocess.TimeoutExpired:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._out.close()


def _free_pair() -> int:
    for _ in range(50):
        port = free_port()
        if _port_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def _port_free(port: int) -> bool:
    """Nothing listens there (connections of the past may linger in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path_factory.mktemp("local-stack"))
    try:
        stack.wait_for_banner()
        yield stack
    finally:
        stack.kill()


def test_serves_chat_plain_and_streamed(local_stack: LocalStack) -> None:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
    plain = requests.post(f"{local_stack.url}/openai/v1/chat/completions", json=body, timeout=60)
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["message"]["role"] == "assistant"
    with requests.post(
        f"{local_stack.url}/openai/v1/chat/completions",
        json={**body, "stream": True},
        stream=True,
        timeout=60,
    ) as response:
        received = list(events(response))
    assert received[-1].done
    assert received[0].json()["choices"][0]["delta"]["role"] == "assistant"


def test_serves_embeddings_and_kserve(local_stack: LocalStack) -> None:
    embedding = requests.post(
        f"{local_stack.url}/openai/v1/embeddings", json={"model": "minilm", "input": "hello"}, timeout=60
    )
    assert embedding.status_code == 200, embedding.text
    assert len(embedding.json()["data"][0]["embedding"]) == 384
    v1 = requests.post(
        f"{local_stack.url}/v1/models/tiny-llama:predict",
        json={"instances": ["Hello"], "parameters": {"max_tokens": 4}},
        timeout=60,
    )
    assert v1.status_code == 200, v1.text
    v2 = requests.post(
        f"{local_stack.url}/v2/models/minilm/infer",
        json={"inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]},
        timeout=60,
    )
    assert v2.status_code == 200, v2.text
    models = requests.get(f"{local_stack.url}/openai/v1/models", timeout=10).json()["data"]
    assert {(m["id"], m["task"]) for m in models} == {
        ("tiny-llama", "text_generation"),
        ("minilm", "text_embedding"),
    }


def _banner_commands(text: str) -> list[str]:
    lines = text[text.index("infergate is serving at") :].splitlines()
    commands, current = [], ""
    for line in lines:
        line = re.sub(r"^\S+ \S+\s+\| ", "", line)  # honcho's "time name | " prefix
        stripped = line.strip()
        if current:
            current += " " + stripped.rstrip("\\").strip()
            if not stripped.endswith("\\"):
                commands.append(current)
                current = ""
        elif stripped.startswith("curl "):
            if stripped.endswith("\\"):
                current = stripped.rstrip("\\").strip()
            else:
                commands.append(stripped)
    return commands


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_banner_curl_commands_work(local_stack: LocalStack) -> None:
    commands = _banner_commands(local_stack.text())
    assert len(commands) >= 5, local_stack.text()[-3000:]
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command + " --fail --silent --show-error --max-time 60"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}\n{done.stdout}"
        assert done.stdout.strip()


def test_batch_round_trip_with_the_sdk(local_stack: LocalStack) -> None:
    """The README's Batch API example against the local stack's Celery worker."""
    import io
    import json

    from openai import OpenAI

    client = OpenAI(base_url=f"{local_stack.url}/openai/v1", api_key="unused")
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i in range(3)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = client.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id, batch
    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["r0", "r1", "r2"]
    assert all(line["response"]["status_code"] == 200 for line in output)


def test_router_metrics_on_the_metrics_port(local_stack: LocalStack) -> None:
    assert requests.get(f"{local_stack.url}/", timeout=10).ok
    text = requests.get(f"http://127.0.0.1:{local_stack.ports['METRICS_PORT']}/metrics", timeout=10).text
    assert 'infergate_router_requests_total{method="GET",route="/",status="200"}' in text


def test_ctrl_c_stops_everything(local_stack: LocalStack) -> None:
    children = local_stack.children()
    assert len(children) == 7  # redis, registry, router, the batch worker, two workers, the banner
    assert local_stack.interrupt() in (0, 130, -signal.SIGINT)
    for name, port in local_stack.ports.items():
        assert _port_free(port), f"{name} {port} still bound after Ctrl-C"
    assert _port_free(local_stack.ports["WORKER_PORT"] + 1)
    for pid in children:
        found = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
        assert found == [], f"processes left in the group of {pid}: {found}"


def test_backend_hint_says_vllm_for_a_llama_and_why_not_for_a_classifier(test_models: Path) -> None:
    def hint(model: Path) -> str:
        done = subprocess.run(
            [sys.executable, str(ROOT / "ci" / "backend_hint.py"), str(model)],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return done.stdout.strip().splitlines()[-1]

    assert hint(test_models / "tiny-llama") == "vllm: LlamaForCausalLM is a text generation model"
    assert hint(test_models / "tiny-bert-classifier").startswith(
        "huggingface: its task is sequence_classification"
    )


@pytest.mark.vllm
def test_make_run_auto_serves_a_llama_folder_on_vllm(
    tmp_path_factory: pytest.TempPathFactory, test_models: Path
) -> None:
    """`make run MODEL_ID=<a Llama folder>` (BACKEND=auto): ci/run.sh, then the
    worker-vllm launcher, which chooses vLLM; the banner says so."""
    if not (ROOT / ".venv-vllm" / ".infergate-stamp").exists():
        pytest.fail(".venv-vllm is missing: ci/test.sh builds it (ci/setup_vllm.sh)")
    stack = LocalStack(
        tmp_path_factory.mktemp("local-stack-vllm"),
        "run.sh",
        MODEL_ID=str(test_models / "tiny-llama"),
        MODEL_NAME="llama-folder",
    )
    try:
        banner = stack.wait_for_banner(timeout_s=420)
        assert "llama-folder: text_generation on vllm" in banner, banner[-3000:]
        models = requests.get(f"{stack.url}/openai/v1/models", timeout=10).json()["data"]
        assert [(m["id"], m["backend"]) for m in models] == [("llama-folder", "vllm")]
    finally:
        stack.kill()
