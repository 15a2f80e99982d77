"""Router overhead, non-streaming: the same requests straight to a
benchmark-engine worker and through the router, at concurrency 1, 16 and
64; the difference in p50/p99 latency is what the router adds. Also the
other non-streaming protocols (chat, v1 predict, v2 infer, embeddings) at 16.

The anchor: vLLM's Rust router (``vllm-router`` from PyPI) in front of a
trivial OpenAI backend (``bench/trivial_openai.py``), measured the same way
(at concurrency 1 and 16, against the backend alone) in the same run; our
added latency is reported as a multiple of its own."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from ..client import Call
from ..context import Context, ScenarioResult, at_least, below, diff, ms, run_async
from ..loadgen import fresh_run
from ..procstat import CpuMeter
from ..profiling import py_spy_record
from ..stacks import ROOT, BenchStack, Process, ProcessFailed, free_port

NAME = "overhead"
LEVELS = (1, 16, 64)
PROMPT = "The quick brown fox jumps over the lazy dog"
TOKENS = 16


def _rid(i: int) -> str:
    return f"bench-{i}-{uuid.uuid4().hex[:12]}"


def completion_calls(worker_url: str, router_url: str, model: str) -> tuple[Call, Call]:
    direct = Call(
        "worker /generate",
        f"{worker_url}/generate",
        lambda i: {"request_id": _rid(i), "prompt": PROMPT, "params": {"max_tokens": TOKENS}},
    )
    routed = Call(
        "router /openai/v1/completions",
        f"{router_url}/openai/v1/completions",
        lambda i: {"model": model, "prompt": PROMPT, "max_tokens": TOKENS},
    )
    return direct, routed


def protocol_calls(worker_url: str, embed_url: str, router_url: str, gen: str, embed: str) -> list[Call]:
    messages = [{"role": "user", "content": PROMPT}]
    return [
        Call(
            "worker /generate (messages)",
            f"{worker_url}/generate",
            lambda i: {"request_id": _rid(i), "messages": messages, "params": {"max_tokens": TOKENS}},
        ),
        Call(
            "router /openai/v1/chat/completions",
            f"{router_url}/openai/v1/chat/completions",
            lambda i: {"model": gen, "messages": messages, "max_tokens": TOKENS},
        ),
        Call("worker /encode", f"{embed_url}/encode", lambda i: {"request_id": _rid(i), "inputs": [PROMPT]}),
        Call(
            "router /v1/models/:predict",
            f"{router_url}/v1/models/{embed}:predict",
            lambda i: {"instances": [PROMPT]},
        ),
        Call(
            "router /v2/models/infer",
            f"{router_url}/v2/models/{embed}/infer",
            lambda i: {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [PROMPT]}]},
        ),
        Call(
            "router /openai/v1/embeddings",
            f"{router_url}/openai/v1/embeddings",
            lambda i: {"model": embed, "input": PROMPT},
        ),
    ]


ANCHOR_LEVELS = (1, 16)


def anchor_calls(backend_url: str, router_url: str) -> tuple[Call, Call]:
    body = {"model": "trivial", "prompt": PROMPT, "max_tokens": TOKENS}
    direct = Call("trivial backend /v1/completions", f"{backend_url}/v1/completions", lambda i: body)
    routed = Call("vllm-router /v1/completions", f"{router_url}/v1/completions", lambda i: body)
    return direct, routed


def measure_anchor(
    workdir: Path, counts: dict[int, int], duration: float
) -> tuple[list[dict[str, Any]], str]:
    """vllm-router over the trivial backend: one row per level, the runs,
    or why it could not run."""
    rows: list[dict[str, Any]] = []
    backend_port, router_port = free_port(), free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    router_url = f"http://127.0.0.1:{router_port}"
    processes: list[Process] = []
    try:
        processes.append(Process(
            "trivial-openai", [sys.executable, "-m", "bench.trivial_openai", "--port", str(backend_port)],
            workdir / "trivial-openai.log", cwd=ROOT,
        ))  # fmt: skip
        processes[0].wait_http_ok(f"{backend_url}/health")
        processes.append(Process(
            "vllm-router", [sys.executable, "-m", "bench.anchor_router", "--port", str(router_port),
                            "--worker_url", backend_url],
            workdir / "vllm-router.log", cwd=ROOT,
        ))  # fmt: skip
        processes[1].wait_http_ok(f"{router_url}/health", timeout_s=60)
    except (ProcessFailed, OSError) as exc:
        for process in processes:
            process.stop()
        return rows, f"vllm-router did not start: {str(exc).splitlines()[0][:300]}"
    direct, routed = anchor_calls(backend_url, router_url)
    runs: list[dict[str, Any]] = []

    async def measure() -> None:
        for c in ANCHOR_LEVELS:
            base = (await fresh_run(direct, c, counts[c], duration, warmup=c)).summary()
            meter = CpuMeter([processes[1].pid]).start()
            summary = (await fresh_run(routed, c, counts[c], duration, warmup=c)).summary()
            _router_stats(summary, meter.stop())
            runs.extend([{**base, "group": "anchor"}, {**summary, "group": "anchor"}])
            rows.append(
                {
                    "concurrency": c,
                    "direct_p50_ms": ms(base, "latency_ms", "p50"),
                    "router_p50_ms": ms(summary, "latency_ms", "p50"),
                    "added_p50_ms": diff(ms(summary, "latency_ms", "p50"), ms(base, "latency_ms", "p50")),
                    "router_rps": summary["requests_per_s"],
                    "requests_per_router_cpu_s": summary["requests_per_router_cpu_s"],
                    "errors": summary["errors"] + base["errors"],
                }
            )

    try:
        run_async(measure())
    finally:
        for process in processes:
            process.stop()
    for row, run in zip(rows, runs[1::2], strict=True):
        row["run"] = run
    return rows, ""


def _router_stats(summary: dict[str, Any], cpu_s: float) -> None:
    ok = summary["requests"] - summary["errors"]
    summary["router_cpu_s"] = round(cpu_s, 3)
    summary["router_cpu_util"] = round(cpu_s / summary["wall_s"], 3) if summary["wall_s"] else None
    summary["requests_per_router_cpu_s"] = round(ok / cpu_s, 1) if cpu_s > 0 else None


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Router overhead, non-streaming",
        "p50/p99 latency added by the router over the same request sent straight to the worker "
        f"(benchmark engine, {TOKENS} tokens, answers at once); router requests/s per process "
        "(INFERGATE_WORKERS=1) and per CPU-second of the router process.",
    )
    duration = ctx.pick(8.0, 30.0)
    counts = {1: ctx.pick(300, 2000), 16: ctx.pick(1500, 10000), 64: ctx.pick(2000, 12000)}
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        worker = stack.null_worker("null", "--tokens", str(TOKENS))
        embed = stack.null_worker("null-embed", "--task", "text_embedding")
        if stack.has_router:
            stack.wait_routable("null")
            stack.wait_routable("null-embed")
        else:
            result.notes.append(f"router did not start: {stack.router_error}")
        direct, routed = completion_calls(worker.url, stack.router_url, "null")
        pids = stack.router_pids()

        async def measure() -> None:
            for c in LEVELS:
                base = (await fresh_run(direct, c, counts[c], duration, warmup=c)).summary()
                result.runs.append(base)
                row: dict[str, Any] = {
                    "concurrency": c,
                    "direct_p50_ms": ms(base, "latency_ms", "p50"),
                    "direct_p99_ms": ms(base, "latency_ms", "p99"),
                    "direct_rps": base["requests_per_s"],
                }
                if stack.has_router:
                    meter = CpuMeter(pids).start()
                    routed_run = await fresh_run(routed, c, counts[c], duration, warmup=c)
                    summary = routed_run.summary()
                    _router_stats(summary, meter.stop())
                    result.runs.append(summary)
                    row.update(
                        router_p50_ms=ms(summary, "latency_ms", "p50"),
                        router_p99_ms=ms(summary, "latency_ms", "p99"),
                        added_p50_ms=diff(ms(summary, "latency_ms", "p50"), row["direct_p50_ms"]),
                        added_p99_ms=diff(ms(summary, "latency_ms", "p99"), row["direct_p99_ms"]),
                        router_rps=summary["requests_per_s"],
                        router_cpu_util=summary["router_cpu_util"],
                        requests_per_router_cpu_s=summary["requests_per_router_cpu_s"],
                        errors=summary["errors"] + base["errors"],
                    )
                else:
                    row["errors"] = base["errors"]
                result.rows.append(row)
            if not stack.has_router:
                return
            for call in protocol_calls(worker.url, embed.url, stack.router_url, "null", "null-embed"):
                run16 = await fresh_run(call, 16, counts[16] // 2, duration / 2, warmup=16, label=call.kind)
                result.runs.append({**run16.summary(), "group": "protocols"})

        run_async(measure())
        if ctx.profile and stack.has_router and pids:

            async def load() -> None:
                await fresh_run(routed, 16, counts[16], duration)

            with py_spy_record(pids[0], ctx.profile_path(NAME)) as info:
                run_async(load())
            result.profile = info

    anchor_rows, why = measure_anchor(ctx.scenario_dir(NAME), counts, duration)
    if why:
        result.notes.append(f"Anchor not measured: {why}")
    by_c = {row["concurrency"]: row for row in result.rows}
    for row in anchor_rows:
        result.runs.append(row.pop("run"))
        ours = by_c.get(row["concurrency"], {}).get("added_p50_ms")
        theirs = row["added_p50_ms"]
        if ours is not None and theirs:
            by_c[row["concurrency"]]["added_p50_x_vllm_router"] = round(ours / theirs, 2)
        result.rows.append({"concurrency": f"{row['concurrency']} vllm-router (anchor)", **{
            k: v for k, v in row.items() if k != "concurrency"}})  # fmt: skip
    result.targets = [
        below("added p50, c=1", by_c[1].get("added_p50_ms"), 0.5, "ms"),
        below("added p50, c=16 (one process)", by_c[16].get("added_p50_ms"), 2.0, "ms"),
        at_least(
            "requests per router CPU-second (c=16)",
            by_c[16].get("requests_per_router_cpu_s"),
            2000,
            "requests/s",
        ),
    ]
    errors = sum(row.get("errors", 0) for row in result.rows)
    errors += sum(r["errors"] for r in result.runs if r.get("group") == "protocols")
    result.targets.append(below("errors", float(errors), 1, "requests"))
    return result
