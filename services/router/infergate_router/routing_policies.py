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

The two keyed policies use rendezvous hashing (each replica scores
``hash(key, url)``; the highest wins), so a replica joining or leaving moves
only the keys it wins or held, with **bounded load** (Mirrokni, Thorup and
Zadimoghaddam's consistent hashing with bounded loads): a replica is taken
only while its in-flight count stays within ``LOAD_FACTOR`` times the mean
(or ``LOAD_SLACK`` above it, whichever is more);
otherwise the key's next replica in score order is, so a popular prefix
spills over to a second replica instead of queueing on one. A request
without a key falls back to fewest-in-flight.

The key of the current request is read from a context variable set at the
protocol edge (:func:`set_route_hint`), so the dispatcher's calls to
:meth:`infergate_router.replica_choice.InFlight.choose` stay as they are.
"""

from __future__ import annotations

import contextvars
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infergate_common.registry_api import ReplicaRecord, RoutingPolicy

SESSION_HEADER = "X-Session-Id"
# Characters of the prompt that name its prefix: a system prompt's first
# few hundred characters tell the shared prompts of a workload apart.
PREFIX_CHARS = 512
# A replica takes a keyed request while its in-flight count, this request
# included, is at most LOAD_FACTOR times the mean over the ready replicas,
# or at most LOAD_SLACK above it (at low load a factor alone would send the
# second request of a prefix elsewhere and lose the cache for nothing).
LOAD_FACTOR = 1.25
LOAD_SLACK = 2.0

Count = Callable[[str], int]


@dataclass(frozen=True)
class RouteHint:
    """What the current request offers the keyed policies."""

    session: str | None = None
    prefix: str | None = None


_HINT: contextvars.ContextVar[RouteHint | None] = contextvars.ContextVar("infergate_route_hint", default=None)


def current_hint() -> RouteHint | None:
    return _HINT.get()


def set_route_hint(body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
    """Note the session and prompt prefix of the request being handled
    (called once per parsed body, so a keep-alive connection's next request
    never sees the previous one's)."""
    session = headers.get(SESSION_HEADER) or body.get("user")
    _HINT.set(RouteHint(session=session if isinstance(session, str) and session else None,
                        prefix=prompt_prefix(body)))  # fmt: skip


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


def fewest_in_flight(ready: Sequence[ReplicaRecord], count: Count) -> ReplicaRecord:
    lowest = min(count(r.url) for r in ready)
    return random.choice([r for r in ready if count(r.url) == lowest])


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
    mean = (sum(loads.values()) + 1) / len(ready)
    cap = max(load_factor * mean, mean + slack)
    key_digest = _digest(key.encode())
    order = sorted(ready, key=lambda r: _digest(key_digest + r.url.encode()), reverse=True)
    for replica in order:
        if loads[replica.url] + 1 <= cap:
            return replica
    # Every replica is at the bound (small counts): the least loaded,
    # earliest in the key's order.
    lowest = min(loads.values())
    return next(r for r in order if loads[r.url] == lowest)


def choose_replica(
    policy: RoutingPolicy, ready: Sequence[ReplicaRecord], count: Count, hint: RouteHint | None
) -> ReplicaRecord:
    """One of ``ready`` (not empty) under ``policy``."""
    if hint is not None:
        if policy == RoutingPolicy.PREFIX_AWARE and hint.prefix:
            return bounded_hash(ready, count, hint.prefix)
        if policy == RoutingPolicy.SESSION_AFFINITY and hint.session:
            return bounded_hash(ready, count, hint.session)
    return fewest_in_flight(ready, count)
