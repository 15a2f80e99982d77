"""vLLM's own OpenAI server against the router with worker-vllm (issue 3):
same tiny Llama, same engine settings, 1, 8 and 32 concurrent streaming
clients (OpenAI completions, ``ignore_eos``, greedy). Output tokens/s
ratio, and the time to first token and inter-token latency our path adds
(p50, p99). The two servers run one after the other, never together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from ..client import Call
from ..context import Context, ScenarioResult, at_least, below, diff, ms, run_async
from ..loadgen import fresh_run
from ..models import ensure_test_models
from ..profiling import py_spy_record
from ..stacks import ROOT, BenchStack, Process, free_port

NAME = "vllm"
LEVELS = (1, 8, 32)
MODEL = "tiny-llama"
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
# The same engine settings on both sides (vLLM on the CPU: see environment.md).
ENGINE_FLAGS = [
    "--dtype",
    "float32",
    "--enforce-eager",
    "--gpu-memory-utilization",
    "0.2",
    "--max-model-len",
    "1024",
]


def stream_call(kind: str, base_url: str, model: str, tokens: int) -> Call:
    return Call(
        kind,
        f"{base_url}/completions",
        lambda i: {
            "model": model,
            "prompt": f"Request {i}: tell me about the weather in a small town by the sea",
            "max_tokens": tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        mode="sse",
    )


def _sweep(call: Call, waves: int, duration: float) -> list[dict[str, Any]]:
    return [run_async(fresh_run(call, c, c * waves, duration, warmup=min(c, 4))).summary() for c in LEVELS]


def _vllm_server(stack: BenchStack, model_dir: Path) -> tuple[Process, str]:
    port = free_port()
    process = Process(
        "vllm-openai",
        [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--served-model-name", MODEL, "--port", str(port), "--host", "127.0.0.1", *ENGINE_FLAGS],
        stack.logs / "vllm-openai.log",
        env=stack.stack._service_env(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_until(lambda: requests.get(f"{url}/v1/models", timeout=2).ok, 300, "serving")
    except BaseException:
        process.stop()
        raise
    return process, f"{url}/v1"


def _profile(
    ctx: Context, result: ScenarioResult, stack: BenchStack, worker_pid: int, call: Call, duration: float
) -> None:
    """Our path again at 8 streams under py-spy: the router and worker-vllm
    (with its engine subprocess)."""
    with (
        py_spy_record(stack.router_pids()[0], ctx.profile_path(NAME)) as router,
        py_spy_record(worker_pid, ctx.profile_path(NAME, "worker"), subprocesses=True) as worker,
    ):
        run_async(fresh_run(call, 8, 16, duration))
    result.profile = router
    result.profiles["worker-vllm"] = worker


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "vLLM comparison",
        "Output tokens/s, TTFT and inter-token latency of vLLM's own OpenAI server against the router "
        f"with worker-vllm (--backend vllm), same {MODEL} and engine flags ({' '.join(ENGINE_FLAGS)}), "
        "streaming completions at 1, 8 and 32 concurrent clients.",
    )
    if not VLLM_PY.exists():
        result.skipped = "no .venv-vllm (bash ci/setup_vllm.sh builds it)"
        return result
    assert ctx.models_dir is not None
    model_dir = ensure_test_models(ctx.models_dir) / MODEL
    tokens = ctx.pick(32, 128)
    waves = ctx.pick(2, 4)
    duration = ctx.pick(30.0, 90.0)
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        server, vllm_url = _vllm_server(stack, model_dir)
        try:
            theirs = _sweep(stream_call("vllm openai server", vllm_url, MODEL, tokens), waves, duration)
        finally:
            server.stop()
        cmd = [str(VLLM_PY), "-m", "infergate_worker_vllm", "--backend", "vllm", "--model_name", MODEL,
               "--model_id", str(model_dir), *ENGINE_FLAGS]  # fmt: skip
        worker = stack.start_worker(MODEL, cmd, timeout_s=300)
        try:
            stack.wait_routable(MODEL)
            call = stream_call("router + worker-vllm", f"{stack.router_url}/openai/v1", MODEL, tokens)
            ours = _sweep(call, waves, duration)
            if ctx.profile:
                _profile(ctx, result, stack, worker.process.pid, call, duration)
        finally:
            stack.stop_worker(worker)

    for c, their, our in zip(LEVELS, theirs, ours, strict=True):
        result.runs += [their, our]
        ratio = round(our["tokens_per_s"] / their["tokens_per_s"], 3) if their["tokens_per_s"] else None
        result.rows.append(
            {
                "label": f"{c} streams",
                "concurrency": c,
                "vllm_tokens_per_s": their["tokens_per_s"],
                "ours_tokens_per_s": our["tokens_per_s"],
                "throughput": ratio,
                "unit": "ours / vLLM tokens/s",
                "added_ttft_p50_ms": diff(ms(our, "ttft_ms", "p50"), ms(their, "ttft_ms", "p50")),
                "added_ttft_p99_ms": diff(ms(our, "ttft_ms", "p99"), ms(their, "ttft_ms", "p99")),
                "added_itl_p50_ms": diff(ms(our, "itl_ms", "p50"), ms(their, "itl_ms", "p50")),
                "added_itl_p99_ms": diff(ms(our, "itl_ms", "p99"), ms(their, "itl_ms", "p99")),
                "errors": their["errors"] + our["errors"],
            }
        )
    ratios = [row["throughput"] for row in result.rows if row["throughput"] is not None]
    result.targets = [
        at_least("throughput ratio, worst of 1/8/32 streams", min(ratios) if ratios else None, 0.9, "x"),
        below("added TTFT p50, 1 stream", result.rows[0]["added_ttft_p50_ms"], 5, "ms"),
    ]
    return result
