"""Requests admitted by the router process itself, from a block of a limit
reserved in Redis, so that most requests of a busy key cost no round trip.

When :data:`~.limiter.ADMIT` admits a request in a scope that can be
reserved (:func:`reservable`), it also counts a block of further requests
in the scope's window, up to ``1/SHARE`` of what the window has left and
at most ``MOST``, and returns the block's size. The process then admits up
to that many requests of the scope on its own for ``LIFE_S``; what is left
after that is given back (subtracted from the second it was counted in).
Every request admitted here was counted in Redis before it was admitted,
so a requests-per-minute limit holds exactly across processes and pods; a
block held by one process can refuse another's request for at most
``LIFE_S``, and only near the limit, where blocks shrink to nothing and
every request goes to Redis again (a limit of ``SHARE`` requests or fewer
never gets one).

Tokens are known only after the response. Those of a request whose scopes
can all be reserved (whether it was admitted here or in Redis) are counted
in the process at once and added to the window within ``FLUSH_S`` (one
script call for all scopes, :data:`~.limiter.SYNC`). A block is used only
while the scope's tokens (as Redis returned them with the block, plus those
counted in the process since) are ``1/SHARE`` of the limit or more below it.
A tokens-per-minute limit may then be passed by what the other processes
used within one block's life; limits under ``TOKEN_FLOOR`` are checked in
Redis request by request. Scopes with a concurrency limit never get a
block: their in-flight slots are taken and freed in Redis per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from infergate_common.api_keys import KeyLimits

log = logging.getLogger(__name__)

# A block is at most this share of what the window has left ...
SHARE = 16
# ... and at most this many requests.
MOST = 256
# How long a process admits from a block before giving back what is left.
LIFE_S = 1.0
# Tokens of requests admitted here reach Redis within this.
FLUSH_S = 0.1
# Tokens-per-minute limits below this are checked in Redis for every request.
TOKEN_FLOOR = 100_000
# While Redis does not answer, the failed sends are logged this often.
WARN_EVERY_S = 10.0


def reservable(limits: KeyLimits) -> bool:
    """Whether requests of a scope with ``limits`` may be admitted from a
    block. A requests limit of ``SHARE`` or fewer never leaves room for one:
    such a scope goes to Redis at once, without waiting for another
    request's try."""
    if limits.max_concurrent:
        return False
    if limits.tpm and limits.tpm < TOKEN_FLOOR:
        return False
    if limits.rpm and limits.rpm <= SHARE:
        return False
    return bool(limits.rpm or limits.tpm)


class Counted(NamedTuple):
    """A scope's window as Redis returned it with a block (the block counted)."""

    requests: int
    requests_reset_ms: int
    tokens: int
    tokens_reset_ms: int


@dataclass
class Block:
    limits: KeyLimits
    keys: tuple[str, str]  # the scope's requests and tokens keys
    second: str  # the Redis second the block was counted in
    until: float  # monotonic
    left: int
    counted: Counted
    # Tokens counted in the process since the block was reserved.
    tokens: int = 0

    def usable(self, limits: KeyLimits, now: float) -> bool:
        if self.left <= 0 or now >= self.until or (self.limits is not limits and self.limits != limits):
            return False
        tpm = limits.tpm
        return not tpm or self.counted.tokens + self.tokens < tpm - tpm // SHARE

    def state(self, now: float) -> Counted:
        """The window now, as far as this process knows it: requests of the
        block not admitted yet are still the caller's."""
        elapsed_ms = int((now - self.until + LIFE_S) * 1000)
        counted = self.counted
        return Counted(
            counted.requests - self.left,
            max(0, counted.requests_reset_ms - elapsed_ms),
            counted.tokens + self.tokens,
            max(0, counted.tokens_reset_ms - elapsed_ms),
        )


# What a sync sends per entry: the scope's requests and tokens keys, tokens
# to add, requests to give back and the second they were counted in.
SyncEntry = tuple[str, str, int, int, str]
# What is owed, summed by the scope's keys and the second of a give-back
# ('' for tokens): [tokens, requests].
Owed = dict[tuple[str, str, str], list[int]]


# How long a request waits for another's request for blocks before asking Redis itself.
REFILL_WAIT_S = 1.0


class Refill:
    """The one request of the process asking Redis for new blocks of some scopes."""

    def __init__(self, blocks: Blocks, names: tuple[str, ...]) -> None:
        self.blocks = blocks
        self.names = names
        self.answered = threading.Event()

    def done(self) -> None:
        with self.blocks._lock:
            self.blocks._refills.pop(self.names, None)
        self.answered.set()


class Blocks:
    """This process's blocks, by scope name, and what is owed to Redis."""

    def __init__(self, sync: Callable[[list[SyncEntry]], None]) -> None:
        self._sync = sync
        self._held: dict[str, Block] = {}
        self._owed: Owed = {}
        self._refills: dict[tuple[str, ...], Refill] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._started = False
        self._warned_at = -WARN_EVERY_S

    def take(self, names: list[str], limits: list[KeyLimits]) -> list[Counted] | None:
        """One request admitted from the blocks of every named scope, with
        each scope's state; None when one of them has no usable block."""
        now = time.monotonic()
        with self._lock:
            found = []
            for name, scope_limits in zip(names, limits, strict=True):
                block = self._held.get(name)
                if block is None or not block.usable(scope_limits, now):
                    return None
                found.append(block)
            for block in found:
                block.left -= 1
            return [block.state(now) for block in found]

    def refill(self, names: list[str]) -> Refill | None:
        """The caller's turn to ask Redis for blocks of ``names`` (call
        ``done()`` after), or None once another request that was asking has
        its answer (or after ``REFILL_WAIT_S``): then look at the blocks again."""
        key = tuple(names)
        with self._lock:
            running = self._refills.get(key)
            if running is None:
                mine = self._refills[key] = Refill(self, key)
                return mine
        running.answered.wait(REFILL_WAIT_S)
        return None

    def hold(self, name: str, block: Block) -> None:
        """A block ADMIT counted; one the scope still had is given back."""
        with self._lock:
            old = self._held.get(name)
            self._held[name] = block
            if old is not None:
                self._give_back(old)
        self._started_and_awake()

    def settle(self, names: list[str], keys: list[tuple[str, str]], tokens: int) -> None:
        """Tokens of a request settled in the process (``RateLimiter.settles_here``),
        owed to each scope's window and counted in the scope's block."""
        if tokens <= 0:
            return
        with self._lock:
            for name, (requests_key, tokens_key) in zip(names, keys, strict=True):
                block = self._held.get(name)
                if block is not None:
                    block.tokens += tokens
                self._owe(requests_key, tokens_key, "", tokens, 0)
        self._started_and_awake()

    def flush(self, release: bool = False) -> None:
        """Send what is owed now: tokens, and what is left of blocks past
        their life (of every block with ``release``, as the process stops)."""
        now = time.monotonic()
        with self._lock:
            for name, block in list(self._held.items()):
                if release or now >= block.until or block.left <= 0:
                    del self._held[name]
                    self._give_back(block)
            owed, self._owed = self._owed, {}
            if not owed and not self._held:
                self._wake.clear()
        if not owed:
            return
        entries = [(requests_key, tokens_key, tokens, back, second)
                   for (requests_key, tokens_key, second), (tokens, back) in owed.items()]  # fmt: skip
        try:
            self._sync(entries)
        except Exception as exc:
            with self._lock:
                for (requests_key, tokens_key, second), (tokens, back) in owed.items():
                    self._owe(requests_key, tokens_key, second, tokens, back)
            if now - self._warned_at >= WARN_EVERY_S:
                self._warned_at = now
                log.warning("rate-limit updates not sent to Redis (kept for the next try): %s", exc)

    def _owe(self, requests_key: str, tokens_key: str, second: str, tokens: int, back: int) -> None:
        """Under the lock."""
        owed = self._owed.setdefault((requests_key, tokens_key, second), [0, 0])
        owed[0] += tokens
        owed[1] += back

    def _give_back(self, block: Block) -> None:
        """Under the lock."""
        if block.left > 0:
            self._owe(*block.keys, block.second, 0, block.left)
            block.left = 0

    def _started_and_awake(self) -> None:
        self._wake.set()
        if not self._started:
            with self._lock:
                if self._started:
                    return
                self._started = True
            threading.Thread(target=self._run, name="rate-limit-blocks", daemon=True).start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(FLUSH_S)
            self.flush()
