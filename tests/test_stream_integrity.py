"""No silent loss on the stream path, under faults (the platform's fault test 4).

Real processes throughout: redis-server, the registry, the router under
gunicorn+gevent, benchmark-engine workers streaming numbered tokens tagged
with their request id. Redis is restarted mid-stream, a worker's connection
to Redis is cut (a proxy the test controls), Redis fills up
(``maxmemory`` with ``noeviction``). Whatever happens, every client reads
its own tokens, in order, without a hole, and ends with ``[DONE]`` after the
last token or with an error event; none hangs. The stack recovers after.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from conftest import _close_stack, _open_stack
from harness.numbered_streams import Outcome, read_stream
from harness.ports import free_port
from harness.processes import Process
from harness.stack import Stack, Worker
from harness.tcp_proxy import TcpProxy

STREAMS = 20
TOKENS = 2000
INTERVAL_MS = "10"  # 20 s per stream: every one is still open when the fault comes
# The router's heartbeat deadline here: a short outage ends well before it
# (the worker's own error reaches the client), a long one well after.
DEADLINE_S = 4.0
SHORT_OUTAGE_S = 1.5
LONG_OUTAGE_S = 6.0


class Run:
    """``STREAMS`` concurrent numbered streams, read in threads."""

    def __init__(self, stack: Stack, model: str, tokens: int = TOKENS, streams: int = STREAMS) -> None:
        self.received = [0] * streams
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(streams)
        url = f"{stack.openai_url}/completions"
        self.futures = [
            self.pool.submit(read_stream, url, model, tokens, 30, self._counter(i)) for i in range(streams)
        ]

    def _counter(self, i: int) -> Callable[[], None]:
        def count() -> None:
            with self.lock:
                self.received[i] += 1

        return count

    def wait_all_started(self, tokens: int = 5, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while min(self.received) < tokens:
            ended = [f.result() for f in self.futures if f.done()]
            early = [o.problems() or o.ending for o in ended][:3]
            assert not ended, f"streams ended before the fault: {early}"
            assert time.monotonic() < deadline, f"streams did not start: {self.received}"
            time.sleep(0.02)

    def outcomes(self) -> list[Outcome]:
        try:
            return [future.result(timeout=60) for future in self.futures]
        finally:
            self.pool.shutdown()


def assert_no_silent_loss(outcomes: list[Outcome]) -> dict[str, int]:
    problems = {o.request_id: o.problems() for o in outcomes if o.problems()}
    assert not problems, problems
    endings: dict[str, int] = {}
    for outcome in outcomes:
        endings[outcome.ending] = endings.get(outcome.ending, 0) + 1
    return endings


def wait_recovered(stack: Stack, model: str, timeout_s: float = 30) -> None:
    """A fresh stream goes through whole, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = read_stream(f"{stack.openai_url}/completions", model, 20)
        if outcome.ending == "done" and not outcome.problems():
            return
        assert time.monotonic() < deadline, f"no recovery: {outcome}"
        time.sleep(0.3)


def null_worker_via(stack: Stack, name: str, redis_url: str, *args: str) -> Worker:
    """A benchmark-engine worker that reaches Redis at ``redis_url``."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "infergate_common.null_engine", "--model_name", name, *args,
        "--port", str(port), "--registry_url", stack.registry_url, "--redis_url", redis_url,
    ]  # fmt: skip
    # The stack's environment (the internal credential among it); the Redis URL is the proxy's.
    env = {key: value for key, value in stack._service_env().items() if key != "INFERGATE_REDIS_URL"}
    process = Process(f"worker-{name}-{port}", cmd, stack.logs / f"worker-{name}-{port}.log", env=env)
    worker = Worker(name, f"http://127.0.0.1:{port}", process)
    stack.workers.append(worker)
    return stack.wait_worker(worker, timeout_s=30)


@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack for this module's faults (each test leaves it recovered),
    with the router's heartbeat deadline at ``DEADLINE_S``."""
    workdir = tmp_path_factory.mktemp("integrity")
    own = _open_stack(workdir / "stack", router_env={"INFERGATE_HEARTBEAT_DEADLINE_S": str(DEADLINE_S)})
    yield own
    _close_stack(own)


@pytest.fixture(autouse=True)
def _workers_end_with_their_test(fresh_stack: Stack) -> Iterator[None]:
    yield
    names = {worker.name for worker in fresh_stack.workers}
    for worker in list(fresh_stack.workers):
        fresh_stack.stop_worker(worker)
    for name in names:
        fresh_stack.forget_model(name)


@pytest.fixture
def proxy(fresh_stack: Stack) -> Iterator[TcpProxy]:
    own = TcpProxy("127.0.0.1", fresh_stack.redis.port).start()
    yield own
    own.stop()


def test_redis_restarted_mid_stream(fresh_stack: Stack) -> None:
    stack = fresh_stack
    stack.null_worker("num", "--tokens", str(TOKENS), "--token_interval_ms", INTERVAL_MS, "--tag_tokens")
    run = Run(stack, "num")
    run.wait_all_started()
    stack.redis.stop()
    stack.redis.start()
    endings = assert_no_silent_loss(run.outcomes())
    # Every stream was open when Redis went: each one learnt of it.
    assert endings == {"error": STREAMS}, endings
    wait_recovered(stack, "num")


@pytest.mark.parametrize("outage_s", [SHORT_OUTAGE_S, LONG_OUTAGE_S])
def test_a_worker_whose_redis_writes_fail(fresh_stack: Stack, proxy: TcpProxy, outage_s: float) -> None:
    """The worker's writes fail for ``outage_s`` (its connection to Redis is
    cut, the router's is not): the worker gives up on its streams and stops
    them; the clients get its error once Redis is back (the short outage) or
    the router's heartbeat deadline (the long one)."""
    stack = fresh_stack
    worker = null_worker_via(
        stack, "cut", proxy_url(proxy, stack.redis.password),
        "--tokens", str(TOKENS), "--token_interval_ms", INTERVAL_MS,
        "--tag_tokens", "--step_streams",
    )  # fmt: skip
    run = Run(stack, "cut")
    run.wait_all_started()
    proxy.cut()
    time.sleep(outage_s)
    proxy.restore()
    outcomes = run.outcomes()
    endings = assert_no_silent_loss(outcomes)
    assert endings == {"error": STREAMS}, endings
    messages = {o.error["message"] for o in outcomes}
    if outage_s < DEADLINE_S:
        # Back before the router's deadline: the worker's own error arrives.
        assert any("could not be written: Redis unreachable" in m for m in messages), messages
    else:
        assert any("sent nothing" in m for m in messages), messages
    wait_recovered(stack, "cut")
    assert worker.process.alive()


def proxy_url(proxy: TcpProxy, password: str | None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{proxy.port}/0"


@pytest.mark.parametrize("full_s", [SHORT_OUTAGE_S, LONG_OUTAGE_S])
def test_redis_full_is_a_clear_error_not_a_gap(fresh_stack: Stack, full_s: float) -> None:
    """Redis refuses every write for ``full_s`` (``maxmemory`` below its use,
    ``noeviction``): the worker gives up on its open streams and stops them;
    each client gets the worker's "Redis is full" error once Redis takes
    writes again (the stream's own entries are trimmed first to make room),
    or the router's heartbeat deadline when that takes too long. A new
    request meanwhile is a 503 that says why."""
    stack = fresh_stack
    stack.null_worker("full", "--tokens", str(TOKENS), "--token_interval_ms", INTERVAL_MS, "--tag_tokens")
    admin = redis.Redis.from_url(stack.redis.url)
    admin.config_set("maxmemory-policy", "noeviction")
    run = Run(stack, "full")
    run.wait_all_started()
    try:
        admin.config_set("maxmemory", "1")
        full_until = time.monotonic() + full_s
        refused = read_stream(f"{stack.openai_url}/completions", "full", 5)
        time.sleep(max(0.0, full_until - time.monotonic()))
    finally:
        admin.config_set("maxmemory", "0")
    outcomes = run.outcomes()
    endings = assert_no_silent_loss(outcomes)
    assert endings == {"error": STREAMS}, endings
    messages = {o.error["message"] for o in outcomes}
    if full_s < DEADLINE_S:
        assert any("could not be written: Redis is full" in m for m in messages), messages
    else:
        assert any("sent nothing" in m for m in messages), messages
    assert refused.status == 503 and "(Redis) is full" in str(refused.error), refused
    wait_recovered(stack, "full")
