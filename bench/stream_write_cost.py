"""The workers' CPU per token-stream entry written to Redis: the stream
writer's append script (one call per batch) against the pipeline of
``XADD``s inside ``MULTI``/``EXEC`` it replaced, side by side in alternating
rounds, on a private redis-server. Each batch is one engine step of 32
streams with one delta each, encoded as the writer encodes it.

    python -m bench.stream_write_cost            # asyncio client (worker-vllm's)
    python -m bench.stream_write_cost --sync     # blocking client (worker-hf's)

Prints the CPU per entry of each and their ratio, and saves them under
``bench/results/stream-write-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis
import redis.utils

from infergate_common.stream_writer import APPEND
from infergate_common.streams import DeltaEvent, encode_event, stream_key

from .stacks import ROOT

STREAMS = 32
STEPS = 400
ROUNDS = 6
MAXLEN = 10_000
TTL_S = 600


def _batch(step: int) -> list[tuple[str, dict[str, str]]]:
    """One step: a delta per stream, each encoded as the writer encodes it."""
    return [
        (stream_key("bench-write", f"s{i}"), encode_event(DeltaEvent(seq=step, index=0, text=" w", tokens=1)))
        for i in range(STREAMS)
    ]


def _script_args(batch: list[tuple[str, dict[str, str]]]) -> tuple[list[str], list[Any]]:
    keys: list[str] = []
    args: list[Any] = [MAXLEN, TTL_S]
    for key, fields in batch:
        keys.append(key)
        args += [len(fields), 0]
        for name, value in fields.items():
            args += [name, value]
    return keys, args


async def _async_round(client: aredis.Redis, script: Any, scripted: bool) -> float:
    start = time.process_time()
    for step in range(STEPS):
        batch = _batch(step)
        if scripted:
            keys, args = _script_args(batch)
            await script(keys=keys, args=args)
        else:
            pipe = client.pipeline(transaction=True)
            for key, fields in batch:
                pipe.xadd(key, fields, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()
    return (time.process_time() - start) / (STEPS * STREAMS) * 1e6


def _sync_round(client: redis.Redis, script: Any, scripted: bool) -> float:
    start = time.process_time()
    for step in range(STEPS):
        batch = _batch(step)
        if scripted:
            keys, args = _script_args(batch)
            script(keys=keys, args=args)
        else:
            pipe = client.pipeline(transaction=True)
            for key, fields in batch:
                pipe.xadd(key, fields, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
            pipe.execute()
    return (time.process_time() - start) / (STEPS * STREAMS) * 1e6


def measure(url: str, sync: bool) -> dict[str, list[float]]:
    us: dict[str, list[float]] = {"script": [], "pipeline": []}
    if sync:
        client = redis.Redis.from_url(url, decode_responses=True)
        script = client.register_script(APPEND)
        for _ in range(ROUNDS):
            for name in ("pipeline", "script"):
                us[name].append(_sync_round(client, script, name == "script"))
        client.close()
        return us

    async def run() -> None:
        client = aredis.Redis.from_url(url, decode_responses=True)
        script = client.register_script(APPEND)
        for _ in range(ROUNDS):
            for name in ("pipeline", "script"):
                us[name].append(await _async_round(client, script, name == "script"))
        await client.aclose()

    asyncio.run(run())
    return us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sync", action="store_true", help="the blocking client (worker-hf's writer)")
    options = parser.parse_args()
    # tests/harness is on the path once .stacks is imported.
    from harness.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir)).start()
        try:
            us = measure(server.url, options.sync)
        finally:
            server.stop()
    script, pipeline = statistics.median(us["script"]), statistics.median(us["pipeline"])
    result = {
        "client": "sync" if options.sync else "asyncio",
        "hiredis": redis.utils.HIREDIS_AVAILABLE,
        "streams_per_batch": STREAMS,
        "batches_per_round": STEPS,
        "rounds": ROUNDS,
        "cpu_us_per_entry": us,
        "median_script_us": round(script, 2),
        "median_pipeline_us": round(pipeline, 2),
        "script_over_pipeline": round(script / pipeline, 3),
    }
    out = ROOT / "bench" / "results" / f"stream-write-{time.strftime('%Y-%m-%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['client']} client, hiredis {result['hiredis']}: script {script:.1f} µs, "
        f"pipeline {pipeline:.1f} µs of CPU per entry ({result['script_over_pipeline']}x); {out}"
    )


if __name__ == "__main__":
    main()
