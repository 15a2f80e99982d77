"""The benchmark engine's model of a prefix cache, for the routing
benchmark: the time to first token grows with the part of the prompt the
replica has not seen, and each replica's cache is bounded.

A prompt is cut into blocks of ``block_tokens`` whitespace-separated words;
each block is named by a hash chained over every block before it (a block
is reusable only after the same prefix, as in vLLM's automatic prefix
caching). The cache keeps the ``capacity_blocks`` most recently used
blocks. A prefill takes ``ms_per_token`` per word after the longest cached
run of leading blocks, computed one block at a time with the replica's
compute held per block (as an engine's chunked prefill): concurrent
prefills share the replica, so a replica that receives too much is slower
for all of its requests, and a short prefill is not stuck behind a long
one. :class:`LoadMeter` keeps the time integral of the requests in flight,
so the benchmark gets each replica's mean load.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from typing import Any


class PrefixCacheModel:
    def __init__(self, capacity_blocks: int, block_tokens: int, ms_per_token: float) -> None:
        self.capacity = max(1, capacity_blocks)
        self.block_tokens = max(1, block_tokens)
        self.s_per_token = ms_per_token / 1000.0
        self._blocks: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._compute = threading.Lock()
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.prefills = 0

    def _chain(self, words: list[str]) -> list[bytes]:
        names: list[bytes] = []
        previous = b""
        full = len(words) // self.block_tokens
        for i in range(full):
            block = " ".join(words[i * self.block_tokens : (i + 1) * self.block_tokens]).encode()
            previous = hashlib.blake2b(previous + block, digest_size=12).digest()
            names.append(previous)
        return names

    def prefill(self, text: str) -> float:
        """Wait as long as the prefill of ``text`` takes here; returns the seconds."""
        words = text.split()
        names = self._chain(words)
        with self._lock:
            hit = 0
            for name in names:
                if name not in self._blocks:
                    break
                hit += 1
            for name in names:
                self._blocks[name] = None
                self._blocks.move_to_end(name)
            while len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)
            cached = hit * self.block_tokens
            self.prompt_tokens += len(words)
            self.cached_tokens += cached
            self.prefills += 1
        uncached = len(words) - cached
        for start in range(0, uncached, self.block_tokens):
            with self._compute:
                time.sleep(min(self.block_tokens, uncached - start) * self.s_per_token)
        return uncached * self.s_per_token

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "prefills": self.prefills,
                "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "cached_blocks": len(self._blocks),
            }


class LoadMeter:
    """Requests in flight now, and their integral over time (seconds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.area = 0.0
        self.requests = 0
        self._since = time.monotonic()

    def _advance(self) -> None:
        now = time.monotonic()
        self.area += self.in_flight * (now - self._since)
        self._since = now

    def enter(self) -> None:
        with self._lock:
            self._advance()
            self.in_flight += 1
            self.requests += 1

    def leave(self) -> None:
        with self._lock:
            self._advance()
            self.in_flight -= 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._advance()
            return {"in_flight": self.in_flight, "in_flight_seconds": self.area, "requests": self.requests}
