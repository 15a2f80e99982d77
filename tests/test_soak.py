"""Soak (the platform's fault test 7): ``INFERGATE_SOAK_STREAMS`` (500)
streams open at once, for ``INFERGATE_SOAK_S`` seconds (60 in ``make test-slow``;
run it by hand for longer, e.g. ``INFERGATE_SOAK_S=600 .venv/bin/python -m
pytest -s tests/test_soak.py``), through the real
router under gunicorn+gevent, from benchmark-engine workers that tag every
token with its request id.

Every stream must deliver each of its own tokens exactly once, in order, and
end with ``[DONE]``: 0 lost, 0 repeated, 0 from another stream. The router's
resident memory and Redis's ``used_memory`` must stay flat once warm (the
workers keep finished streams 5 s here, so Redis holds a bounded window).
The figures are printed and written to ``soak.json`` in the test's folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from conftest import _close_stack, _open_stack
from harness.stack import Stack

SOAK_S = float(os.environ.get("INFERGATE_SOAK_S", "60"))
STREAMS = int(os.environ.get("INFERGATE_SOAK_STREAMS", "500"))
TOKENS = 10
INTERVAL_MS = 1000  # 10 s a stream: about 500 tokens/s and 50 new streams/s in all
STREAM_TTL_S = 5
# The router's heartbeat deadline here: the soak checks integrity and memory,
# not how fast a dead worker is noticed, and a machine shared by other jobs can
# starve a process for longer than the 2 s of the other test stacks.
DEADLINE_S = float(os.environ.get("INFERGATE_SOAK_DEADLINE_S", "10"))
TOKEN = re.compile(r"(\S+):tok(\d+) ")


@dataclass
class Tally:
    streams: int = 0
    tokens: int = 0
    lost: int = 0
    repeated: int = 0
    foreign: int = 0
    bad_endings: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def bad(self, request_id: str, what: str) -> None:
        self.bad_endings.append(f"{request_id}: {what}")
        kind = what[:60]
        self.errors[kind] = self.errors.get(kind, 0) + 1


def _rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (gunicorn's workers)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        pending.extend(int(child) for child in children)
    return total


async def _one_stream(session: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    request_id = f"soak-{uuid.uuid4().hex}"
    body = {"model": "soak", "prompt": "x", "max_tokens": TOKENS, "stream": True}
    seen: list[int] = []
    ending = "eof"
    async with session.post(url, json=body, headers={"X-Request-Id": request_id}) as response:
        if response.status != 200:
            tally.bad(request_id, f"status {response.status}: {(await response.text())[:200]}")
            return
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                ending = "done"
                break
            chunk = json.loads(data)
            if "error" in chunk:
                ending = f"error {chunk['error']['message']}"
                break
            for choice in chunk["choices"]:
                for owner, number in TOKEN.findall(choice["text"]):
                    if owner != request_id:
                        tally.foreign += 1
                    else:
                        seen.append(int(number))
    tally.streams += 1
    tally.tokens += len(seen)
    tally.repeated += len(seen) - len(set(seen))
    tally.lost += len(set(range(TOKENS)) - set(seen))
    if seen != sorted(seen):
        tally.bad(request_id, "tokens out of order")
    if ending != "done":
        tally.bad(request_id, ending)


async def _client(session: aiohttp.ClientSession, url: str, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        await _one_stream(session, url, tally)


async def _soak(stack: Stack, samples: list[dict[str, Any]]) -> Tally:
    tally = Tally()
    admin = redis.Redis.from_url(stack.redis.url)
    assert stack.router is not None
    url = f"{stack.openai_url}/completions"
    started = time.monotonic()
    until = started + SOAK_S
    # Silence this long is a hang (the router sends keep-alives every second).
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        clients = [asyncio.create_task(_client(session, url, until, tally)) for _ in range(STREAMS)]
        while not all(task.done() for task in clients):
            samples.append(
                {
                    "t_s": round(time.monotonic() - started, 1),
                    "router_rss_kb": _rss_kb(stack.router.pid),
                    "redis_used_kb": int(admin.info("memory")["used_memory"]) // 1024,  # type: ignore[index]
                    "redis_keys": int(admin.dbsize()),  # type: ignore[arg-type]
                    "streams_done": tally.streams,
                }
            )
            await asyncio.wait(clients, timeout=min(5.0, max(1.0, SOAK_S / 12)))
        for task in clients:
            task.result()
    return tally


@pytest.fixture
def soak_stack(tmp_path: Path) -> Iterator[Stack]:
    own = _open_stack(tmp_path / "stack", router_env={"INFERGATE_HEARTBEAT_DEADLINE_S": str(DEADLINE_S)})
    yield own
    _close_stack(own)


@pytest.mark.slow
def test_soak_streams_lose_nothing_and_memory_stays_flat(soak_stack: Stack, tmp_path: Path) -> None:
    stack = soak_stack
    for _ in range(2):
        stack.null_worker(
            "soak", "--tokens", str(TOKENS), "--token_interval_ms", str(INTERVAL_MS), "--step_streams",
            "--tag_tokens", "--stream_ttl_s", str(STREAM_TTL_S),
        )  # fmt: skip
    samples: list[dict[str, Any]] = []
    tally = asyncio.run(_soak(stack, samples))
    # Warm once the first streams have ended and expired; flat from then on.
    warm = [s for s in samples if s["t_s"] >= min(SOAK_S / 3, 4 * TOKENS * INTERVAL_MS / 1000 + STREAM_TTL_S)]
    assert len(warm) >= 3, samples
    first, last = warm[: len(warm) // 3 or 1], warm[-(len(warm) // 3 or 1) :]
    figures = {
        "soak_s": SOAK_S,
        "concurrent_streams": STREAMS,
        "streams": tally.streams,
        "tokens": tally.tokens,
        "lost": tally.lost,
        "repeated": tally.repeated,
        "foreign": tally.foreign,
        "bad_endings": len(tally.bad_endings),
        "errors": tally.errors,
        "router_rss_mb": {
            "start": round(samples[0]["router_rss_kb"] / 1024, 1),
            "warm": round(statistics.median(s["router_rss_kb"] for s in first) / 1024, 1),
            "end": round(statistics.median(s["router_rss_kb"] for s in last) / 1024, 1),
        },
        "redis_used_mb": {
            "start": round(samples[0]["redis_used_kb"] / 1024, 1),
            "warm": round(statistics.median(s["redis_used_kb"] for s in first) / 1024, 1),
            "end": round(statistics.median(s["redis_used_kb"] for s in last) / 1024, 1),
        },
        "redis_keys_end": last[-1]["redis_keys"],
        "samples": samples,
    }
    (tmp_path / "soak.json").write_text(json.dumps(figures, indent=1))
    print("soak figures:", json.dumps({k: v for k, v in figures.items() if k != "samples"}))
    assert tally.bad_endings == [], tally.bad_endings[:10]
    assert (tally.lost, tally.repeated, tally.foreign) == (0, 0, 0)
    assert tally.streams >= STREAMS, "every client finished at least one stream"
    assert tally.tokens == tally.streams * TOKENS
    router, store = figures["router_rss_mb"], figures["redis_used_mb"]
    assert router["end"] <= router["warm"] * 1.15 + 10, figures["router_rss_mb"]
    assert store["end"] <= store["warm"] * 1.25 + 5, figures["redis_used_mb"]
