"""vLLM's cancellation pattern: many long streaming requests whose clients
give up after a short timeout (the connection closes mid-stream)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp


async def _abandon_one(session: aiohttp.ClientSession, url: str, body: dict[str, Any], after_s: float) -> int:
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=after_s)) as response:
            async for _ in response.content.iter_any():
                pass
            return response.status
    except (TimeoutError, aiohttp.ClientError):
        return 0


async def _abandon(url: str, body: dict[str, Any], count: int, after_s: float) -> list[int]:
    # force_close: each request on its own connection, closed when abandoned.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(*(_abandon_one(session, url, body, after_s) for _ in range(count)))


def abandon_streams(url: str, body: dict[str, Any], count: int, after_s: float = 0.5) -> list[int]:
    """Send ``count`` requests at once, each dropped ``after_s`` seconds in;
    the statuses of those that ended by themselves (0: abandoned)."""
    return asyncio.run(_abandon(url, body, count, after_s))
