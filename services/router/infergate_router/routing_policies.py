"""How a router picks one of a model's ready replicas, per model
(``ModelRecord.routing_policy``, set by a worker's ``--routing_policy``, the
registry's ``PUT /registry/models/<name>/routing`` or the chart's
``models.<m>.routingPolicy``):

* ``fewest_in_flight`` (the default): the replica with the fewest requests
  in flight from this process, ties broken at random so that several
  router processes do not all pile onto the same replica.
* ``session_affinity``: requests of one session (the ``X-Session-Id``
  header, else the OpenAI ``user`` field) go to the same replica, so its
  caches serve the whole conversation.
* ``prefix_aware``: requests whose prompts start alike (the first
  ``PREFIX_CHARS`` characters of the prompt, or of the chat messages in
  order: a shared system prompt) go to the same replica, whose prefix cache
  then holds that prefix, as vLLM's router's ``consistent_hash`` /
  ``cache_aware`` and production-stack's ``prefixaware`` policies do.

Both keyed policies order the replicas per key by rendezvous hashing (each
replica scores ``hash(key, url)``, highest first: a replica joining or
leaving moves only the keys it wins or held) under a **bounded load**
(Mirrokni, Thorup and Zadimoghaddam's consistent hashing with bounded
loads): a replica is taken only while its in-flight count, this request
included, stays within ``LOAD_FACTOR`` times the mean (or ``LOAD_SLACK``
above it, whichever is more); otherwise the key's next replica in that
order is, so a popular key spills over to a second replica instead of
queueing on one.

Session keys are many, so hashing alone spreads them. Prompt prefixes are
few (a handful of system prompts), and a hash spreads a handful of keys
unevenly: the replicas that drew more of them overflow, spill, and every
cache ends up holding every prefix. So prefix-aware keeps a table of the
prefixes it has seen (:class:`PrefixTable`, bounded, least recently used
out): a new prefix goes to the replica holding the fewest prefixes (ties
in the key's rendezvous order, so router processes that see prefixes in the
same order agree), and stays there, within the load bound, as SGLang's
cache-aware router sends an unmatched prompt to the worker with the
smallest cache tree. Three more rules keep that table fair and its caches
warm:

* A prefix over its owner's bound spills to the **least loaded** other
  replica (ties in the key's order), not to the key's next replica in
  order. The spilled request's prefill is uncached wherever it lands; sent
  to a replica about as busy as the owner, it made that replica slower
  still, that replica spilled in turn and evicted its own prefixes, and the
  caches stayed cold for the rest of the run (3 of 5 routing benchmark
  runs missed their balance target that way: one replica idle, three
  churning).
* A replica that is ready but momentarily passed over (full, or already
  tried for this request) keeps its prefixes; only a replica that left the
  ready set loses them.
* A replica holding ``REBALANCE_GAP`` or more prefixes fewer than the
  prefix's owner takes the prefix over, within the bound: a replica that
  joins (scale-out, a restart) gets its share of a workload whose few
  prefixes are all known, instead of only its spills. Each move costs that
  prefix one uncached prefill, and moves stop once the counts are even.

A request without a key falls back to fewest-in-flight.

The key of the current request is read from a context variable set at the
protocol edge (:func:`set_route_hint`), so the dispatcher's calls to
:meth:`infergate_router.replica_choice.InFlight.choose` stay as they are.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import hashlib
import random
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from infergate_common.registry_api import ReplicaRecord, RoutingPolicy

SESSION_HEADER = "X-Session-Id"
# Characters of the prompt that name its prefix: a system prompt's first
# few hundred characters tell the shared prompts of a workload apart.
PREFIX_CHARS = 512
# A replica takes a keyed request while its in-flight count, this request
# included, is at most LOAD_FACTOR times the mean over the ready replicas,
# or at most LOAD_SLACK above it (at low load a factor alone would send the
# second request of a prefix elsewhere and lose the cache for nothing). The
# bound holds at every choice; a tighter one (1.25) spilled so often in the
# routing benchmark that the spill targets' caches churned and the time-
# averaged balance got worse, not better (bench/scenarios/routing.py
# measures the busiest replica's time-averaged load over the mean).
LOAD_FACTOR = 1.5
LOAD_SLACK = 2.0
# Prefix-aware: a replica holding this many prefixes fewer than a prefix's
# owner takes it over (one apart is as even as an odd count gets).
REBALANCE_GAP = 2
# Prefixes remembered per process (a few hundred bytes each).
PREFIX_TABLE_SIZE = 10_000

Count = Callable[[str], int]


@dataclass(frozen=True)
class RouteHint:
    """What the current request offers the keyed policies. The prompt
    prefix is taken from the body only when a prefix-aware model asks."""

    session: str | None = None
    body: Mapping[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def prefix(self) -> str | None:
        return prompt_prefix(self.body)


_HINT: contextvars.ContextVar[RouteHint | None] = contextvars.ContextVar("infergate_route_hint", default=None)


def current_hint() -> RouteHint | None:
    return _HINT.get()


class _Headers(Protocol):
    def get(self, key: str) -> str | None: ...


def set_route_hint(
    body: Mapping[str, Any], headers: _Headers | Mapping[str, str | None]
) -> Callable[[], None]:
    """Note the session and prompt of the request being handled (called once
    per parsed body, so a keep-alive connection's next request never sees
    the previous one's); returns what forgets them when the request ends."""
    session = headers.get(SESSION_HEADER) or body.get("user")
    token = _HINT.set(RouteHint(session=session if isinstance(session, str) and session else None, body=body))
    return lambda: _HINT.reset(token)


def prompt_prefix(body: Mapping[str, Any], chars: int = PREFIX_CHARS) -> str | None:
    """The first ``chars`` characters of the prompt: a completion's prompt
    (the first of a batch), token ids as text, or the chat messages' roles
    and contents in order."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch: its first prompt
    if isinstance(prompt, str):
        return prompt[:chars] or None
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return " ".join(str(t) for t in prompt[: chars // 2])[:chars]
    messages = body.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        size = 0
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            text = content if isinstance(content, str) else repr(content)
            parts.append(f"{message.get('role', '')}:{text}\n")
            size += len(parts[-1])
            if size >= chars:
                break
        return "".join(parts)[:chars] or None
    return None


def _digest(data: bytes) -> bytes:
    # Python's str hash is salted per process; routers must agree, so the
    # hash is a fixed one.
    return hashlib.blake2b(data, digest_size=8).digest()


class PrefixTable:
    """The replica each recently seen prefix was given, per model, and how
    many prefixes each replica holds."""

    def __init__(self, capacity: int = PREFIX_TABLE_SIZE) -> None:
        self.capacity = capacity
        self._owner: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
        self._held: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def owner(self, model: str, key: str) -> str | None:
        with self._lock:
            url = self._owner.get((model, key))
            if url is not None:
                self._owner.move_to_end((model, key))
            return url

    def held(self, url: str) -> int:
        return self._held.get(url, 0)

    def assign(self, model: str, key: str, url: str) -> None:
        with self._lock:
            previous = self._owner.pop((model, key), None)
            if previous is not None:
                self._held[previous] -= 1
            self._owner[(model, key)] = url
            self._held[url] += 1
            while len(self._owner) > self.capacity:
                _, evicted = self._owner.popitem(last=False)
                self._held[evicted] -= 1


def fewest_in_flight(ready: Sequence[ReplicaRecord], count: Count) -> ReplicaRecord:
    if len(ready) == 1:
        return ready[0]
    lowest = min(count(r.url) for r in ready)
    return random.choice([r for r in ready if count(r.url) == lowest])


def _rendezvous(ready: Sequence[ReplicaRecord], key: str) -> list[ReplicaRecord]:
    key_digest = _digest(key.encode())
    return sorted(ready, key=lambda r: _digest(key_digest + r.url.encode()), reverse=True)


def _bound(loads: Mapping[str, int], load_factor: float, slack: float) -> float:
    mean = (sum(loads.values()) + 1) / len(loads)
    return max(load_factor * mean, mean + slack)


def _first_within(order: Sequence[ReplicaRecord], loads: Mapping[str, int], cap: float) -> ReplicaRecord:
    for replica in order:
        if loads[replica.url] + 1 <= cap:
            return replica
    # Every replica is at the bound: the least loaded, earliest in the order.
    lowest = min(loads.values())
    return next(r for r in order if loads[r.url] == lowest)


def bounded_hash(
    ready: Sequence[ReplicaRecord],
    count: Count,
    key: str,
    load_factor: float = LOAD_FACTOR,
    slack: float = LOAD_SLACK,
) -> ReplicaRecord:
    """The key's first replica in rendezvous order whose load stays within bound."""
    if len(ready) == 1:
        return ready[0]
    loads = {r.url: count(r.url) for r in ready}
    return _first_within(_rendezvous(ready, key), loads, _bound(loads, load_factor, slack))


def prefix_owner(
    ready: Sequence[ReplicaRecord],
    count: Count,
    key: str,
    table: PrefixTable,
    model: str,
    load_factor: float = LOAD_FACTOR,
    slack: float = LOAD_SLACK,
    passed_over: Collection[str] = (),
) -> ReplicaRecord:
    """The replica that holds ``key``'s prefix, within the load bound; a
    new prefix goes to the replica holding the fewest. ``ready`` are the
    replicas open to this request; ``passed_over`` the URLs of any others
    that are ready but passed over now (full, already tried), which keep
    their prefixes."""
    if len(ready) == 1:
        return ready[0]
    loads = {r.url: count(r.url) for r in ready}
    cap = _bound(loads, load_factor, slack)
    order = _rendezvous(ready, key)
    owner = table.owner(model, key)
    if owner is not None and (owner in loads or owner in passed_over):
        fewest = min(order, key=lambda r: table.held(r.url))  # ties: the first in the key's order
        if (
            owner in loads
            and table.held(owner) - table.held(fewest.url) >= REBALANCE_GAP
            and loads[fewest.url] + 1 <= cap
        ):
            table.assign(model, key, fewest.url)
            return fewest
        if owner in loads and loads[owner] + 1 <= cap:
            return next(r for r in ready if r.url == owner)
        # Over the bound, or passed over: spill to the least loaded other
        # replica (ties in the key's order); the owner stays the owner.
        return min((r for r in order if r.url != owner), key=lambda r: loads[r.url])
    # Fewest prefixes held first; the sort is stable, so ties keep the key's order.
    chosen = _first_within(sorted(order, key=lambda r: table.held(r.url)), loads, cap)
    table.assign(model, key, chosen.url)
    return chosen


def choose_replica(
    policy: RoutingPolicy,
    ready: Sequence[ReplicaRecord],
    count: Count,
    hint: RouteHint | None,
    table: PrefixTable,
    model: str,
    passed_over: Collection[str] = (),
) -> ReplicaRecord:
    """One of ``ready`` (not empty) under ``policy``; ``passed_over`` are
    the URLs of the model's ready replicas left out for this request."""
    if hint is not None:
        if policy == RoutingPolicy.PREFIX_AWARE and hint.prefix:
            return prefix_owner(ready, count, hint.prefix, table, model, passed_over=passed_over)
        if policy == RoutingPolicy.SESSION_AFFINITY and hint.session:
            return bounded_hash(ready, count, hint.session)
    return fewest_in_flight(ready, count)
