"""Rate limits kept in Redis, so they hold across every router process and pod.

Each limited *scope* (an API key, or a model with a global cap) has three
Redis keys under ``P:ratelimit:<scope>:``:

* ``requests``, ``tokens``: hashes of per-second counters (field: the Unix
  second by Redis's own clock). A window is the last 60 seconds, so the
  limit is a sliding minute at one-second granularity: a request counts
  until the second it was admitted in is 60 seconds old.
* ``inflight``: a sorted set of the requests in flight, scored by the time
  their lease ends (so a router that dies does not hold slots for ever).

:data:`ADMIT` checks every scope and, only when all pass, counts the
request: one ``EVALSHA``, one round trip. Tokens are known only after the
response, so :data:`SETTLE` adds them (and frees the in-flight slot) once
it has been sent; a request is admitted while its scope has used fewer
tokens than its limit, so a long request may overshoot the limit by its
own size, and the next ones wait.

A busy scope without a concurrency limit is mostly admitted in the router
process itself, from blocks of its limit :data:`ADMIT` reserves
(:mod:`.reservations`); the tokens of requests in such scopes are counted
in the process and reach Redis through :data:`SYNC`, for every scope at
once, instead of through :data:`SETTLE`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import redis

from infergate_common.api_keys import KeyLimits
from infergate_common.errors import ServiceUnavailable

from . import reservations

log = logging.getLogger(__name__)

WINDOW_S = 60

ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local WINDOW = 60
local member = ARGV[1]
local lease = tonumber(ARGV[2])
local share = tonumber(ARGV[3])
local scopes = #KEYS / 3

-- usage in the window; when it falls below limit; when it is all gone
local function window(key, limit)
    local flat = redis.call('HGETALL', key)
    local buckets, stale, total = {}, {}, 0
    for i = 1, #flat, 2 do
        local s = tonumber(flat[i])
        if s <= sec - WINDOW then
            stale[#stale + 1] = flat[i]
        else
            local n = tonumber(flat[i + 1])
            buckets[#buckets + 1] = {s, n}
            total = total + n
        end
    end
    if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
    table.sort(buckets, function(a, b) return a[1] < b[1] end)
    local left, free_at = total, now
    for _, b in ipairs(buckets) do
        if left < limit then break end
        left = left - b[2]
        free_at = b[1] + WINDOW
    end
    local empty_at = now
    if #buckets > 0 then empty_at = buckets[#buckets][1] + WINDOW end
    return total, free_at, empty_at
end

local allowed, retry = 1, 0
local seen = {}
for i = 0, scopes - 1 do
    local rpm, tpm, conc = tonumber(ARGV[4 + i * 4]), tonumber(ARGV[5 + i * 4]), tonumber(ARGV[6 + i * 4])
    local r_used, r_empty, t_used, t_empty, inflight = 0, now, 0, now, 0
    if rpm > 0 then
        local free_at
        r_used, free_at, r_empty = window(KEYS[i * 3 + 1], rpm)
        if r_used >= rpm then allowed = 0; retry = math.max(retry, free_at - now) end
    end
    if tpm > 0 then
        local free_at
        t_used, free_at, t_empty = window(KEYS[i * 3 + 2], tpm)
        if t_used >= tpm then allowed = 0; retry = math.max(retry, free_at - now) end
    end
    if conc > 0 then
        redis.call('ZREMRANGEBYSCORE', KEYS[i * 3 + 3], '-inf', now)
        inflight = redis.call('ZCARD', KEYS[i * 3 + 3])
        if inflight >= conc then allowed = 0; retry = math.max(retry, 1) end
    end
    seen[i + 1] = {r_used, r_empty, t_used, t_empty, inflight, 0}
end

if allowed == 1 then
    for i = 0, scopes - 1 do
        local rpm, conc = tonumber(ARGV[4 + i * 4]), tonumber(ARGV[6 + i * 4])
        local want = tonumber(ARGV[7 + i * 4])
        -- A block of further requests for the process to admit itself: at
        -- most a share of what is left after this one (none near the limit).
        local block = want
        if rpm > 0 then
            block = math.max(0, math.min(want, math.floor((rpm - seen[i + 1][1] - 1) / share)))
            redis.call('HINCRBY', KEYS[i * 3 + 1], t[1], 1 + block)
            redis.call('EXPIRE', KEYS[i * 3 + 1], WINDOW + 5)
            seen[i + 1][1] = seen[i + 1][1] + 1 + block
            seen[i + 1][2] = math.max(seen[i + 1][2], sec + WINDOW)
        end
        seen[i + 1][6] = block
        if conc > 0 then
            redis.call('ZADD', KEYS[i * 3 + 3], now + lease, member)
            redis.call('EXPIRE', KEYS[i * 3 + 3], math.ceil(lease) + 5)
            seen[i + 1][5] = seen[i + 1][5] + 1
        end
    end
end

local out = {allowed, math.ceil(retry * 1000), sec}
for i = 1, scopes do
    local s = seen[i]
    out[#out + 1] = s[1]
    out[#out + 1] = math.max(0, math.ceil((s[2] - now) * 1000))
    out[#out + 1] = s[3]
    out[#out + 1] = math.max(0, math.ceil((s[4] - now) * 1000))
    out[#out + 1] = s[5]
    out[#out + 1] = s[6]
end
return out
"""

SETTLE = """
local t = redis.call('TIME')
local tokens = tonumber(ARGV[2])
for i = 0, #KEYS / 2 - 1 do
    local tpm, conc = tonumber(ARGV[3 + i * 2]), tonumber(ARGV[4 + i * 2])
    if tpm > 0 and tokens > 0 then
        redis.call('HINCRBY', KEYS[i * 2 + 1], t[1], tokens)
        redis.call('EXPIRE', KEYS[i * 2 + 1], 65)
    end
    if conc > 0 then redis.call('ZREM', KEYS[i * 2 + 2], ARGV[1]) end
end
return 1
"""

# Tokens of requests settled in the process (RateLimiter.settles_here), and
# what is left of blocks past their life: per entry two keys (requests,
# tokens) and three numbers (tokens to add, requests to give back, the second
# they were counted in).
SYNC = """
local t = redis.call('TIME')
for i = 0, #KEYS / 2 - 1 do
    local tokens, back = tonumber(ARGV[1 + i * 3]), tonumber(ARGV[2 + i * 3])
    if tokens > 0 then
        redis.call('HINCRBY', KEYS[i * 2 + 2], t[1], tokens)
        redis.call('EXPIRE', KEYS[i * 2 + 2], 65)
    end
    if back > 0 then
        local second = ARGV[3 + i * 3]
        local counted = tonumber(redis.call('HGET', KEYS[i * 2 + 1], second) or '0')
        local take = math.min(counted, back)
        if take > 0 then redis.call('HINCRBY', KEYS[i * 2 + 1], second, -take) end
    end
end
return 1
"""
PER_SCOPE = 6
# Scopes whose Redis key names are kept formatted.
KEY_NAMES_KEPT = 4096


@dataclass(frozen=True)
class Scope:
    """Something limited: ``key:<id>`` or ``model:<name>``."""

    name: str
    limits: KeyLimits

    @functools.cached_property
    def reservable(self) -> bool:
        """:func:`.reservations.reservable` of the limits, worked out once per scope."""
        return reservations.reservable(self.limits)


class Usage(NamedTuple):
    """One scope's state after an admission, for the ``x-ratelimit-*`` headers
    (a named tuple: one is made per scope of every request)."""

    limits: KeyLimits
    requests: int
    requests_reset_ms: int
    tokens: int
    tokens_reset_ms: int
    inflight: int


class Decision(NamedTuple):
    allowed: bool
    retry_after_ms: int
    usage: list[Usage]
    # Admitted from this process's blocks, without a round trip.
    local: bool = False


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str, lease_s: float, fail_open: bool) -> None:
        self.client = client
        self.prefix = prefix
        self.lease_s = lease_s
        self.fail_open = fail_open
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._sync = client.register_script(SYNC)
        self._warned_at = 0.0
        self._key_names: dict[str, tuple[str, str, str]] = {}
        self.blocks = reservations.Blocks(self._send)

    def _keys(self, scope: Scope) -> tuple[str, str, str]:
        keys = self._key_names.get(scope.name)
        if keys is None:
            base = f"{self.prefix}:ratelimit:{scope.name}"
            keys = f"{base}:requests", f"{base}:tokens", f"{base}:inflight"
            if len(self._key_names) >= KEY_NAMES_KEPT:
                self._key_names.clear()
            self._key_names[scope.name] = keys
        return keys

    @staticmethod
    def _numbers(limits: KeyLimits, want: int) -> list[int]:
        return [limits.rpm or 0, limits.tpm or 0, limits.max_concurrent or 0, want]

    def _send(self, entries: list[reservations.SyncEntry]) -> None:
        keys: list[str] = []
        args: list[str | int] = []
        for requests_key, tokens_key, tokens, back, second in entries:
            keys += (requests_key, tokens_key)
            args += (tokens, back, second)
        self._sync(keys=keys, args=args)

    def flush(self) -> None:
        """As the process stops: send Redis the tokens counted here and give
        back what is left of every block."""
        self.blocks.flush(release=True)

    def _unreachable(self, exc: Exception) -> None:
        if self.fail_open:
            if time.monotonic() - self._warned_at > 10:
                self._warned_at = time.monotonic()
                log.warning("rate limits not enforced: Redis unreachable (%s); failing open", exc)
            return
        log.warning("rate limits cannot be checked: Redis unreachable (%s)", exc)
        raise ServiceUnavailable("rate limits cannot be checked right now; try again shortly") from exc

    def admit(self, scopes: list[Scope], member: str) -> Decision | None:
        """Count the request in every scope, or none of them when one is full:
        from this process's blocks when every scope has one, else in Redis.
        None when Redis is unreachable and the policy is to fail open."""
        names = [scope.name for scope in scopes]
        limits = [scope.limits for scope in scopes]
        local = self._from_blocks(names, limits)
        if local is not None:
            return local
        if not self.settles_here(scopes):
            return self._in_redis(scopes, member, 0)
        # One request of the process asks Redis for new blocks; the others
        # that ran out meanwhile wait for its answer instead of each asking.
        refill = self.blocks.refill(names)
        if refill is None:
            local = self._from_blocks(names, limits)
            if local is not None:
                return local
            return self._in_redis(scopes, member, 0)
        try:
            return self._in_redis(scopes, member, reservations.MOST)
        finally:
            refill.done()

    def _from_blocks(self, names: list[str], limits: list[KeyLimits]) -> Decision | None:
        counted = self.blocks.take(names, limits)
        if counted is None:
            return None
        usage = [Usage(scope_limits, *state, 0) for scope_limits, state in zip(limits, counted, strict=True)]
        return Decision(True, 0, usage, local=True)

    def _in_redis(self, scopes: list[Scope], member: str, want: int) -> Decision | None:
        """ADMIT, asking for blocks of ``want`` requests (0: none)."""
        keys: list[str] = []
        args: list[str | int | float] = [member, self.lease_s, reservations.SHARE]
        for scope in scopes:
            keys.extend(self._keys(scope))
            args.extend(self._numbers(scope.limits, want))
        try:
            reply = self._admit(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            self._unreachable(exc)
            return None
        values = [int(v) for v in reply]
        second = str(values[2])
        usage = []
        for i, scope in enumerate(scopes):
            requests, requests_reset, tokens, tokens_reset, inflight, block = values[
                3 + i * PER_SCOPE : 3 + (i + 1) * PER_SCOPE
            ]
            # The block's requests are still this caller's to make.
            usage.append(
                Usage(scope.limits, requests - block, requests_reset, tokens, tokens_reset, inflight)
            )
            if block > 0:
                counted = reservations.Counted(requests, requests_reset, tokens, tokens_reset)
                until = time.monotonic() + reservations.LIFE_S
                requests_key, tokens_key, _ = self._keys(scope)
                held = reservations.Block(
                    scope.limits, (requests_key, tokens_key), second, until, block, counted
                )
                self.blocks.hold(scope.name, held)
        return Decision(bool(values[0]), values[1], usage)

    @staticmethod
    def settles_here(scopes: list[Scope]) -> bool:
        """Whether a request in ``scopes`` is settled without a round trip:
        none has an in-flight slot to free, so its tokens are counted in
        the process's blocks at once and reach Redis within ``FLUSH_S``."""
        return all(scope.reservable for scope in scopes)

    def settle_local(self, scopes: list[Scope], tokens: int) -> None:
        """Add a request's tokens here (sent to Redis within ``FLUSH_S``)."""
        counted = [scope for scope in scopes if scope.limits.tpm]
        keys = [self._keys(scope)[:2] for scope in counted]
        self.blocks.settle([scope.name for scope in counted], keys, tokens)

    def settle(self, scopes: list[Scope], member: str, tokens: int) -> None:
        """Add the request's tokens and free its in-flight slot."""
        if self.settles_here(scopes):
            self.settle_local(scopes, tokens)
            return
        keys: list[str] = []
        args: list[str | int | float] = [member, max(0, tokens)]
        for scope in scopes:
            _, tokens_key, inflight_key = self._keys(scope)
            keys.extend((tokens_key, inflight_key))
            args.extend((scope.limits.tpm or 0, scope.limits.max_concurrent or 0))
        try:
            self._settle(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            log.warning("could not settle usage (%s tokens) in Redis: %s", tokens, exc)


def duration(ms: int) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    minutes = int(seconds // 60)
    rest = round(seconds - minutes * 60, 3)
    text = f"{rest:g}s"
    return f"{minutes}m{text}" if minutes else text


def retry_after_s(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))
