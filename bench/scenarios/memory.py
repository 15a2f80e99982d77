"""Router memory: resident set size of the router's one gunicorn worker
process (/proc/<pid>/status VmRSS), idle after a warm-up and while 500
streams are open, and again once they have ended."""

from __future__ import annotations

import asyncio

from ..client import Client
from ..context import Context, ScenarioResult, below, run_async
from ..loadgen import closed_loop, fresh_run
from ..procstat import rss_kb
from ..stacks import BenchStack
from .relay import stream_calls

NAME = "memory"
STREAMS = 500
INTERVAL_MS = 200.0


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Router memory",
        f"RSS of the router worker process idle (after a warm-up) and with {STREAMS} open streams "
        f"(benchmark engine, one token per stream every {INTERVAL_MS:g} ms), per open stream.",
    )
    tokens = ctx.pick(40, 100)
    idle = after = 0
    # (open streams, RSS kB) while the load runs
    during: list[tuple[int, int]] = []
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        worker = stack.null_worker("null-slow", "--step_streams", "--token_interval_ms", str(INTERVAL_MS))
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        stack.wait_routable("null-slow")
        pid = stack.router_pids()[0]
        _, warm = stream_calls(worker.url, stack.router_url, "null-slow", 2)
        _, long = stream_calls(worker.url, stack.router_url, "null-slow", tokens)

        async def measure() -> tuple[int, int]:
            await fresh_run(warm, 50, 100, 60)
            await asyncio.sleep(1.0)
            idle = rss_kb(pid)
            async with Client(timeout_s=600) as client:
                load = asyncio.create_task(closed_loop(client, long, STREAMS, STREAMS, 600))
                while not load.done():
                    await asyncio.sleep(0.25)
                    during.append((client.progress.streaming, rss_kb(pid)))
                result.runs.append((await load).summary())
            await asyncio.sleep(1.0)
            return idle, rss_kb(pid)

        idle, after = run_async(measure())

    most = max((n for n, _ in during), default=0)
    at_most = [kb for n, kb in during if n == most and n > 0]
    open_kb = max(at_most) if at_most else None
    per_stream = None if open_kb is None else (open_kb - idle) / most
    result.rows.append(
        {
            "idle_rss_kb": idle,
            "most_streams_open": most,
            "rss_then_kb": open_kb,
            "peak_rss_kb": max((kb for _, kb in during), default=None),
            "after_rss_kb": after,
            "kb_per_open_stream": None if per_stream is None else round(per_stream, 1),
            "errors": result.runs[0]["errors"] if result.runs else None,
        }
    )
    result.targets = [below(f"RSS per open stream ({most} open)", per_stream, 50, "KB")]
    if most < STREAMS:
        result.notes.append(
            f"at most {most} of the {STREAMS} streams were open at once (see errors); "
            "the figure per stream is taken at that point"
        )
    return result
