"""The requests the load generator sends, and how each is timed.

Three ways of reading an answer:

* ``json``: one POST, the whole body; latency to the last byte.
* ``sse``: one POST answered with server-sent events (OpenAI streaming);
  every ``data:`` line is timed on arrival.
* ``worker_stream``: the baseline of the relay, without the router: POST the
  worker's ``/generate`` with ``stream: true`` (202), then read the Redis
  stream straight away through one multiplexed ``XREAD BLOCK``, as the
  router's reader does.

Tokens stamped by the benchmark engine (``tok<i>@<ns>``, ``--stamp_tokens``)
give the relay latency of each token: receipt time minus the worker's
monotonic send time (one clock for every process of the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson
import redis.asyncio as aioredis

from .loopback import require_loopback
from .records import RequestRecord

STAMP = re.compile(rb"@(\d{6,})")
NS = 1e-9

Mode = Literal["json", "sse", "worker_stream"]


@dataclass(frozen=True)
class Call:
    """One kind of request: where it goes, what it sends (``body(i)`` for the
    i-th request) and how its answer is read."""

    kind: str
    url: str
    body: Callable[[int], dict[str, Any]]
    mode: Mode = "json"
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        require_loopback(self.url)


class Progress:
    """Live counts, read by scenarios that act while streams are open."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.streaming = 0
        self.finished = 0


def _content_tokens(chunk: Any) -> tuple[int, int | None, str]:
    """(content pieces, usage completion tokens or None, error) of one OpenAI chunk."""
    if not isinstance(chunk, dict):
        return 0, None, ""
    if "error" in chunk:
        error = chunk["error"]
        return 0, None, str(error.get("message", error) if isinstance(error, dict) else error)
    pieces = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text:
            pieces += 1
    usage = chunk.get("usage")
    completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return pieces, completion, ""


class Client:
    """An aiohttp session (and a Redis client for the baseline), shared by
    every concurrent request of a run."""

    def __init__(self, redis_url: str | None = None, timeout_s: float = 120) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        self.redis_url = require_loopback(redis_url) if redis_url else None
        self.session: aiohttp.ClientSession | None = None
        self.redis: aioredis.Redis | None = None
        self.mux: StreamMux | None = None
        self.progress = Progress()
        self.t0 = time.monotonic()

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        if self.redis_url:
            # A blocking pool: a burst of new streams waits for a connection.
            pool = aioredis.BlockingConnectionPool.from_url(self.redis_url, max_connections=64, timeout=30)
            self.redis = aioredis.Redis(connection_pool=pool)
            self.mux = StreamMux(self.redis)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.mux is not None:
            await self.mux.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def send(self, call: Call, i: int) -> RequestRecord:
        record = RequestRecord(kind=call.kind)
        start = time.monotonic_ns()
        record.start = start * NS - self.t0
        self.progress.in_flight += 1
        try:
            if call.mode == "json":
                await self._json(call, i, record)
            elif call.mode == "sse":
                await self._sse(call, i, record, start)
            else:
                await self._worker_stream(call, i, record, start)
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.progress.in_flight -= 1
            self.progress.finished += 1
        record.latency_s = (time.monotonic_ns() - start) * NS
        return record

    def _post(self, call: Call, i: int, close: bool = False) -> Any:
        assert self.session is not None
        headers = {"Content-Type": "application/json", **dict(call.headers)}
        if close:
            headers["Connection"] = "close"
        return self.session.post(call.url, data=orjson.dumps(call.body(i)), headers=headers)

    async def _json(self, call: Call, i: int, record: RequestRecord) -> None:
        async with self._post(call, i) as response:
            raw = await response.read()
            record.status = response.status
        if not 200 <= record.status < 300:
            record.error = raw[:300].decode(errors="replace")
            return
        body = orjson.loads(raw)
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            record.tokens = int(usage.get("completion_tokens") or 0)

    def _token(self, record: RequestRecord, now: int, start: int, last: list[int]) -> None:
        if record.ttft_s is None:
            record.ttft_s = (now - start) * NS
            self.progress.streaming += 1
        else:
            record.gaps_s.append((now - last[0]) * NS)
        last[0] = now

    def _stream_ended(self, record: RequestRecord) -> None:
        if record.ttft_s is not None:
            self.progress.streaming -= 1

    async def _sse(self, call: Call, i: int, record: RequestRecord, start: int) -> None:
        last = [start]
        pieces = 0
        usage_tokens: int | None = None
        done = False
        try:
            async with self._post(call, i) as response:
                record.status = response.status
                if response.status != 200:
                    record.error = (await response.read())[:300].decode(errors="replace")
                    return
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    now = time.monotonic_ns()
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    for stamp in STAMP.findall(payload):
                        record.relay_s.append((now - int(stamp)) * NS)
                    count, completion, error = _content_tokens(orjson.loads(payload))
                    if error:
                        record.error = error
                        return
                    if completion is not None:
                        usage_tokens = completion
                    if count:
                        pieces += count
                        self._token(record, now, start, last)
        finally:
            self._stream_ended(record)
        record.tokens = usage_tokens if usage_tokens is not None else pieces
        if not done and not record.error:
            record.error = "stream ended without [DONE]"

    async def _worker_stream(self, call: Call, i: int, record: RequestRecord, start: int) -> None:
        assert self.mux is not None, "worker_stream needs a redis_url"
        # The stream is read from Redis: the HTTP connection is not reused
        # while it lasts, and an idle keep-alive would hold one of the
        # worker's limited connection slots.
        async with self._post(call, i, close=True) as response:
            record.status = response.status
            raw = await response.read()
        if response.status != 202:
            record.error = raw[:300].decode(errors="replace")
            return
        key = orjson.loads(raw)["stream_key"].encode()
        last = [start]
        entries = self.mux.subscribe(key)
        try:
            await self.mux.wake()
            while True:
                try:
                    now, batch = await asyncio.wait_for(entries.get(), timeout=30)
                except TimeoutError:
                    record.error = "no stream entry for 30 s"
                    return
                for _entry_id, fields in batch:
                    event = fields.get(b"event")
                    data: bytes = fields.get(b"data", b"")
                    if event == b"delta":
                        for stamp in STAMP.findall(data):
                            record.relay_s.append((now - int(stamp)) * NS)
                        if b'"text":""' not in data:
                            record.tokens += 1
                            self._token(record, now, start, last)
                    elif event == b"done":
                        return
                    elif event == b"error":
                        record.error = data[:300].decode(errors="replace")
                        return
        finally:
            self.mux.unsubscribe(key)
            self._stream_ended(record)


class StreamMux:
    """One ``XREAD BLOCK`` over every open stream of the client, as the
    router's reader does, so the baseline reads Redis the same way; a write
    to a private wake stream picks a new subscription up at once."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.wake_key = f"bench:wake:{uuid.uuid4().hex}".encode()
        self.queues: dict[bytes, asyncio.Queue[tuple[int, list[Any]]]] = {}
        self.last: dict[Any, Any] = {self.wake_key: b"$"}
        self.task: asyncio.Task[None] | None = None

    def subscribe(self, key: bytes) -> asyncio.Queue[tuple[int, list[Any]]]:
        queue: asyncio.Queue[tuple[int, list[Any]]] = asyncio.Queue()
        self.queues[key] = queue
        self.last[key] = b"0-0"
        if self.task is None:
            self.task = asyncio.create_task(self._read())
        return queue

    def unsubscribe(self, key: bytes) -> None:
        self.queues.pop(key, None)
        self.last.pop(key, None)

    async def wake(self) -> None:
        await self.redis.xadd(self.wake_key, {b"w": b"1"}, maxlen=1, approximate=False)

    async def _read(self) -> None:
        while True:
            reply: Any = await self.redis.xread(dict(self.last), block=1000, count=1000)
            now = time.monotonic_ns()
            for key, entries in reply or ():
                if key == self.wake_key:
                    self.last[key] = entries[-1][0]
                    continue
                queue = self.queues.get(key)
                if queue is None or not entries:
                    continue
                self.last[key] = entries[-1][0]
                queue.put_nowait((now, entries))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.redis.delete(self.wake_key)
