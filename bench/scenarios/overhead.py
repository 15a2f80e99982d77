"""Router overhead, non-streaming: the same requests straight to a
benchmark-engine worker and through the router, at concurrency 1, 16 and
64; the difference in p50/p99 latency is what the router adds. Also the
other non-streaming protocols (chat, v1 predict, v2 infer, embeddings) at 16."""

from __future__ import annotations

import uuid
from typing import Any

from ..client import Call
from ..context import Context, ScenarioResult, below, diff, ms, run_async
from ..loadgen import fresh_run
from ..procstat import CpuMeter
from ..profiling import py_spy_record
from ..stacks import BenchStack

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

    by_c = {row["concurrency"]: row for row in result.rows}
    result.targets = [
        below("added p50, c=1", by_c[1].get("added_p50_ms"), 1.0, "ms"),
        below("added p50, c=16", by_c[16].get("added_p50_ms"), 3.0, "ms"),
    ]
    errors = sum(row.get("errors", 0) for row in result.rows)
    errors += sum(r["errors"] for r in result.runs if r.get("group") == "protocols")
    result.targets.append(below("errors", float(errors), 1, "requests"))
    return result
