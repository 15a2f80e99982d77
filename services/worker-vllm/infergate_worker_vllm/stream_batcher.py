"""Stream entries written from the engine's asyncio loop, many streams per
Redis round trip.

Every delta of every running request is queued here; one task sends all
that queued up while the previous pipeline was in flight, in one pipeline.
Entries keep their order per stream (one sender, FIFO), the loop never
blocks on Redis, and a busy engine costs one round trip per batch rather
than one per token. The stream protocol is :mod:`infergate_common.streams`'
(the same keys, ``MAXLEN ~``, and expiry after the final entry).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from infergate_common.streams import StreamEvent, StreamWriter, encode_event, is_final

log = logging.getLogger(__name__)


class StreamBatcher:
    """Use from the loop's thread only."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._client: Any = None
        self._pending: list[tuple[StreamWriter, StreamEvent]] = []
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        import redis.asyncio

        self._client = redis.asyncio.Redis.from_url(self.redis_url)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-stream-batcher")

    def put(self, writer: StreamWriter, event: StreamEvent) -> None:
        """Queue ``event``; nothing is queued after a stream's final entry."""
        if writer.closed:
            return
        if is_final(event):
            writer.closed = True
        self._pending.append((writer, event))
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._send(batch)
            if not self._pending:
                self._idle.set()

    async def _send(self, batch: list[tuple[StreamWriter, StreamEvent]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for writer, event in batch:
            pipe.xadd(writer.key, encode_event(event), maxlen=writer.maxlen, approximate=True)
            if is_final(event):
                pipe.expire(writer.key, writer.ttl_s)
        try:
            await pipe.execute()
        except Exception:
            # The router's heartbeat deadline ends streams whose entries were lost.
            log.exception("writing %d stream entries to Redis failed", len(batch))

    async def drain(self) -> None:
        """Wait until everything queued so far is written."""
        if self._idle is not None:
            await self._idle.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._client is not None:
            await self._client.aclose()
