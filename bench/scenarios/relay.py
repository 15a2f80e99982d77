"""Streaming relay: per-token latency from the worker's write to Redis
(XADD) to the client's receipt of the SSE event, through one router process
(INFERGATE_WORKERS=1) at 1, 100 and 500 concurrent streams, against the
same streams read straight from Redis by the client (the floor any relay
has: Redis plus this client). Then the most tokens/s the router process
relays, with the benchmark engine writing as fast as it can."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..client import Call
from ..context import Context, ScenarioResult, at_least, below, diff, ms, run_async
from ..loadgen import fresh_run
from ..procstat import CpuMeter
from ..profiling import py_spy_record
from ..stacks import BenchStack

NAME = "relay"
LEVELS = (1, 100, 500)
INTERVAL_MS = 25.0
# The capacity figure stands on at least this much router CPU.
MIN_CAPACITY_CPU_S = 10.0
PROMPT = "Tell me a story"


def stream_calls(worker_url: str, router_url: str, model: str, tokens: int) -> tuple[Call, Call]:
    direct = Call(
        "redis direct",
        f"{worker_url}/generate",
        lambda i: {
            "request_id": f"bench-{i}-{uuid.uuid4().hex[:12]}",
            "prompt": PROMPT,
            "params": {"max_tokens": tokens},
            "stream": True,
        },
        mode="worker_stream",
    )
    routed = Call(
        "router sse",
        f"{router_url}/openai/v1/completions",
        lambda i: {"model": model, "prompt": PROMPT, "max_tokens": tokens, "stream": True},
        mode="sse",
    )
    return direct, routed


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Consecutive waves as one run: counts and rates summed, the
    percentiles of the wave in the middle (they are alike)."""
    merged = dict(runs[len(runs) // 2])
    for key in ("requests", "errors", "tokens", "wall_s"):
        merged[key] = sum(r[key] for r in runs)
    merged["tokens_per_s"] = round(merged["tokens"] / merged["wall_s"], 1) if merged["wall_s"] else 0.0
    # Errors of any wave, not only of the one in the middle.
    kinds: dict[str, int] = {}
    for r in runs:
        for kind, n in (r.get("error_kinds") or {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    merged["error_kinds"] = kinds
    merged["first_error"] = next((r["first_error"] for r in runs if r.get("first_error")), "")
    merged["waves"] = len(runs)
    return merged


def _cpu(summary: dict[str, Any], cpu_s: float) -> None:
    summary["router_cpu_s"] = round(cpu_s, 3)
    summary["router_cpu_util"] = round(cpu_s / summary["wall_s"], 3) if summary["wall_s"] else None
    summary["tokens_per_router_cpu_s"] = round(summary["tokens"] / cpu_s, 1) if cpu_s > 0 else None


def _row(streams: int, summary: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {
        "streams": streams,
        "relay_p50_ms": ms(summary, "relay_ms", "p50"),
        "relay_p99_ms": ms(summary, "relay_ms", "p99"),
        "direct_p50_ms": ms(base, "relay_ms", "p50"),
        "direct_p99_ms": ms(base, "relay_ms", "p99"),
        "added_p50_ms": diff(ms(summary, "relay_ms", "p50"), ms(base, "relay_ms", "p50")),
        "added_p99_ms": diff(ms(summary, "relay_ms", "p99"), ms(base, "relay_ms", "p99")),
        "ttft_p50_ms": ms(summary, "ttft_ms", "p50"),
        "direct_ttft_p50_ms": ms(base, "ttft_ms", "p50"),
        "tokens_per_s": summary["tokens_per_s"],
        "direct_tokens_per_s": base["tokens_per_s"],
        "router_cpu_util": summary["router_cpu_util"],
        "errors": summary["errors"] + base["errors"],
    }


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Streaming relay",
        "Per-token latency from the worker's XADD to the client's receipt (stamped tokens, one "
        f"clock), benchmark engine stepping every open stream each {INTERVAL_MS:g} ms as a batching "
        "engine does; one router process. 'direct' reads the same streams straight from Redis. "
        "Capacity: tokens/s relayed with the engine unpaced, and tokens per CPU-second of the router.",
    )
    tokens = ctx.pick(40, 200)
    waves = ctx.pick(1, 2)
    duration = ctx.pick(30.0, 90.0)
    fast_tokens = ctx.pick(1000, 1000)
    capacity_s = ctx.pick(60.0, 120.0)
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        # --tokens above every max_tokens: the request decides the length.
        paced = stack.null_worker(
            "null-paced", "--stamp_tokens", "--step_streams", "--token_interval_ms", str(INTERVAL_MS),
            "--tokens", "100000",
        )  # fmt: skip
        fast = stack.null_worker(
            "null-fast", "--stamp_tokens", "--step_streams", "--token_interval_ms", "0", "--tokens", "100000"
        )
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        stack.wait_routable("null-paced")
        stack.wait_routable("null-fast")
        pids = stack.router_pids()
        direct, routed = stream_calls(paced.url, stack.router_url, "null-paced", tokens)
        fast_direct, fast_routed = stream_calls(fast.url, stack.router_url, "null-fast", fast_tokens)

        redis_url = stack.redis_url

        async def measure() -> None:
            for c in LEVELS:
                count = max(c * waves, ctx.pick(5, 20))
                warm = min(c, 10)
                base = (await fresh_run(direct, c, count, duration, warm, redis_url=redis_url)).summary()
                meter = CpuMeter(pids).start()
                summary = (await fresh_run(routed, c, count, duration, warm)).summary()
                _cpu(summary, meter.stop())
                result.runs += [base, summary]
                result.rows.append(_row(c, summary, base))
            c = 100
            base = (await fresh_run(fast_direct, c, c * waves, duration, redis_url=redis_url)).summary()
            # Capacity: waves of 100 unpaced streams until the router has
            # used MIN_CAPACITY_CPU_S of CPU (or the time runs out), so the
            # figure is not a few seconds' noise.
            meter = CpuMeter(pids).start()
            started = time.monotonic()
            waves_run: list[dict[str, Any]] = []
            while True:
                waves_run.append((await fresh_run(fast_routed, c, c, duration)).summary())
                used = meter.stop()
                if used >= MIN_CAPACITY_CPU_S or time.monotonic() - started > capacity_s:
                    break
            summary = _merged(waves_run)
            _cpu(summary, used)
            for run_ in (base, summary):
                run_["label"] += " unpaced"
                run_["paced"] = False
            result.runs += [base, summary]
            row = _row(c, summary, base)
            row["streams"] = f"{c} unpaced"
            row["tokens_per_router_cpu_s"] = summary["tokens_per_router_cpu_s"]
            row["router_cpu_s"] = summary["router_cpu_s"]
            result.rows.append(row)

        run_async(measure())
        if ctx.profile and pids:

            async def load() -> None:
                await fresh_run(fast_routed, 100, 300, duration)

            with py_spy_record(pids[0], ctx.profile_path(NAME)) as info:
                run_async(load())
            result.profile = info

    by = {row["streams"]: row for row in result.rows}
    capacity = by.get("100 unpaced", {})
    result.targets = [
        below("relay p50, 100 streams", by.get(100, {}).get("relay_p50_ms"), 1.0, "ms"),
        below("relay p99, 100 streams", by.get(100, {}).get("relay_p99_ms"), 10.0, "ms"),
        at_least("tokens per router CPU-second", capacity.get("tokens_per_router_cpu_s"), 25000, "tokens/s"),
        at_least("router CPU behind that figure", capacity.get("router_cpu_s"), MIN_CAPACITY_CPU_S, "s"),
        below("errors", float(sum(row["errors"] for row in result.rows)), 1, "requests"),
    ]
    result.notes.append(
        "relay = worker XADD to client receipt through the router; direct = the same read straight "
        "from Redis by the client; added = relay - direct. Tokens per router CPU-second is what one "
        "router process relays with a core to itself; tokens_per_s is what it did here, sharing "
        "the cores with the engine, redis-server and this client."
    )
    return result
