"""Fixed-concurrency (closed loop) and fixed-rate (open loop) drivers, each
bounded in request count and in time."""

from __future__ import annotations

import asyncio
import itertools
import time

from .client import Call, Client
from .records import RequestRecord, RunResult


async def closed_loop(
    client: Client,
    call: Call,
    concurrency: int,
    count: int,
    duration_s: float,
    label: str = "",
    warmup: int = 0,
) -> RunResult:
    """``concurrency`` requests in flight until ``count`` were sent or
    ``duration_s`` passed; ``warmup`` requests first, not recorded."""
    if warmup:
        await asyncio.gather(*(client.send(call, -1 - i) for i in range(min(warmup, concurrency))))
        for _ in range(max(0, warmup - concurrency)):
            await client.send(call, -1)
    numbers = itertools.count()
    records: list[RequestRecord] = []
    started = time.monotonic()
    deadline = started + duration_s

    async def lane() -> None:
        while time.monotonic() < deadline:
            i = next(numbers)
            if i >= count:
                return
            records.append(await client.send(call, i))

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.monotonic() - started
    return RunResult(label or call.kind, concurrency, wall, records)


async def open_loop(
    client: Client,
    call: Call,
    rate_per_s: float,
    count: int,
    duration_s: float,
    max_in_flight: int = 1000,
    label: str = "",
) -> RunResult:
    """Requests started at a fixed rate whatever the answers' pace, until
    ``count`` or ``duration_s``; at most ``max_in_flight`` at once (a request
    due while the cap is reached waits, and its latency counts from its start)."""
    records: list[RequestRecord] = []
    slots = asyncio.Semaphore(max_in_flight)
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    deadline = started + duration_s

    async def one(i: int) -> None:
        async with slots:
            records.append(await client.send(call, i))

    for i in range(count):
        due = started + i / rate_per_s
        if due >= deadline:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    wall = time.monotonic() - started
    return RunResult(label or call.kind, 0, wall, records, {"rate_per_s": rate_per_s})


async def fresh_run(
    call: Call,
    concurrency: int,
    count: int,
    duration_s: float,
    warmup: int = 0,
    label: str = "",
    redis_url: str | None = None,
    timeout_s: float = 300,
) -> RunResult:
    """:func:`closed_loop` on a client of its own, so no keep-alive
    connection of an earlier run stays open against the server's limits."""
    async with Client(redis_url=redis_url, timeout_s=timeout_s) as client:
        return await closed_loop(client, call, concurrency, count, duration_s, label=label, warmup=warmup)
