"""The registry's records in Redis.

Keys (``P`` is the prefix):

* ``P:registry:models``: set of model names.
* ``P:registry:model:<name>``: the model record as JSON, without replicas.
* ``P:registry:replicas:<name>``: hash, replica URL -> :class:`StoredReplica` JSON.
* ``P:registry:expiry``: sorted set of ``<name>\\n<url>`` scored by the time
  the replica expires unless it heartbeats again.

A replica whose expiry has passed is never listed, whether or not the sweeper
(:meth:`RegistryStore.reap_expired`) has removed it yet, so rotation does not
depend on the sweeper's timing. Every change is published on
:func:`infergate_common.registry_api.changes_channel`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import redis
from pydantic import BaseModel

from infergate_common.errors import InvalidRequest, ModelNotFound, NotFound
from infergate_common.registry_api import (
    AliasesUpdate,
    ChangeMessage,
    DomainsUpdate,
    ModelList,
    ModelRecord,
    ReplicaRecord,
    ReplicaRegistration,
    RoutingUpdate,
    changes_channel,
)
from infergate_common.worker_api import WorkerInfo

# Names travel in URL paths (``/v1/models/<name>:predict``, so no ':'), host
# names and the expiry set's members.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# Removes every expired replica atomically, so a heartbeat that lands between
# reading and deleting is never lost. Returns the removed members.
_REAP_SCRIPT = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, member in ipairs(members) do
    redis.call('ZREM', KEYS[1], member)
    local sep = string.find(member, '\\n', 1, true)
    if sep then
        redis.call('HDEL', ARGV[2] .. string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
    end
end
return members
"""


class StoredReplica(BaseModel):
    """A replica as kept in Redis: the public record plus its lease."""

    url: str
    ready: bool
    last_seen: float
    ttl_s: float
    info: WorkerInfo | None = None

    def alive(self, now: float) -> bool:
        return self.last_seen + self.ttl_s > now

    def public(self) -> ReplicaRecord:
        return ReplicaRecord(url=self.url, ready=self.ready, last_seen=self.last_seen, info=self.info)


def check_name(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise InvalidRequest(
            f"invalid model name {name!r}: letters, digits, '.', '_' and '-', at most 200",
            param="name",
        )
    return name


class RegistryStore:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.clock = clock
        self.channel = changes_channel(prefix)
        self._names_key = f"{prefix}:registry:models"
        self._expiry_key = f"{prefix}:registry:expiry"
        self._reap = client.register_script(_REAP_SCRIPT)

    # ------------------------------------------------------------------ keys

    def _model_key(self, name: str) -> str:
        return f"{self.prefix}:registry:model:{name}"

    def _replicas_prefix(self) -> str:
        return f"{self.prefix}:registry:replicas:"

    def _replicas_key(self, name: str) -> str:
        return self._replicas_prefix() + name

    @staticmethod
    def _member(name: str, url: str) -> str:
        return f"{name}\n{url}"

    # --------------------------------------------------------------- reading

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def _load_record(self, raw: Any, replicas: dict[Any, Any], now: float) -> ModelRecord:
        record = ModelRecord.model_validate_json(raw)
        live = [
            stored
            for stored in (StoredReplica.model_validate_json(v) for v in replicas.values())
            if stored.alive(now)
        ]
        live.sort(key=lambda stored: stored.url)
        record.replicas = [stored.public() for stored in live]
        return record

    def get(self, name: str) -> ModelRecord:
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self._model_key(name))
        pipe.hgetall(self._replicas_key(name))
        raw, replicas = pipe.execute()
        if raw is None:
            raise ModelNotFound(name)
        return self._load_record(raw, replicas, self.clock())

    def list_models(self) -> ModelList:
        names = sorted(str(name) for name in self.redis.smembers(self._names_key))  # type: ignore[union-attr]
        if not names:
            return ModelList(models=[])
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.get(self._model_key(name))
            pipe.hgetall(self._replicas_key(name))
        results = pipe.execute()
        now = self.clock()
        models = [
            self._load_record(raw, replicas, now)
            for raw, replicas in zip(results[::2], results[1::2], strict=True)
            if raw is not None
        ]
        return ModelList(models=models)

    # --------------------------------------------------------------- changes

    def publish(self, name: str, change: str) -> None:
        self.redis.publish(self.channel, ChangeMessage(model=name, change=change).model_dump_json())

    def _change_record(
        self, name: str, change: Callable[[ModelRecord | None], ModelRecord]
    ) -> tuple[ModelRecord | None, ModelRecord]:
        """Read, change and write a model record atomically (optimistic, retried
        when another writer got there first); returns (before, after)."""
        key = self._model_key(name)
        outcome: list[tuple[ModelRecord | None, ModelRecord]] = []

        def attempt(pipe: Any) -> None:
            raw = pipe.get(key)
            existing = None if raw is None else ModelRecord.model_validate_json(raw)
            updated = change(existing).model_copy(update={"replicas": []})
            pipe.multi()
            if updated != existing:
                pipe.set(key, updated.model_dump_json())
                pipe.sadd(self._names_key, name)
            outcome[:] = [(existing, updated)]

        self.redis.transaction(attempt, key)
        return outcome[0]

    @staticmethod
    def _record_from(
        name: str, existing: ModelRecord | None, registration: ReplicaRegistration, now: float
    ) -> ModelRecord:
        info = registration.info
        base: dict[str, Any] = existing.model_dump() if existing else {"name": name, "created": int(now)}
        base.update(
            model_id=info.model_id,
            revision=info.revision,
            task=info.task,
            backend=info.backend,
            backend_reason=info.backend_reason,
            architecture=info.architecture,
            max_model_len=info.max_model_len,
            chat_template=info.chat_template,
            encoder_decoder=info.encoder_decoder,
            replicas=[],
        )
        # What the worker was started with wins over an earlier PUT; None leaves it as it is.
        if registration.domains is not None:
            base["domains"] = [_host_name(d, "domains") for d in registration.domains]
        if registration.hosts is not None:
            base["hosts"] = [_host_name(h, "hosts") for h in registration.hosts]
        if registration.restricted is not None:
            base["restricted"] = registration.restricted
        if registration.routing_policy is not None:
            base["routing_policy"] = registration.routing_policy
        aliases: list[str] = list(base.get("aliases") or [])
        aliases += [alias for alias in info.aliases if alias not in aliases]
        base["aliases"] = aliases
        return ModelRecord.model_validate(base)

    def register(self, name: str, registration: ReplicaRegistration) -> ModelRecord:
        """Register a replica or renew its lease; creates or updates the model."""
        check_name(name)
        if registration.info.name != name:
            raise InvalidRequest(
                f"replica serves model {registration.info.name!r}, not {name!r}", param="info.name"
            )
        now = self.clock()
        changes: list[str] = []
        existing, record = self._change_record(
            name, lambda current: self._record_from(name, current, registration, now)
        )
        if existing is None:
            changes.append("model_created")
        elif record != existing:
            changes.append("model_updated")

        stored = StoredReplica(
            url=registration.url,
            ready=registration.ready,
            last_seen=now,
            ttl_s=registration.ttl_s,
            info=registration.info,
        )
        replicas_key = self._replicas_key(name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(replicas_key, registration.url)
        pipe.hset(replicas_key, registration.url, stored.model_dump_json())
        pipe.zadd(self._expiry_key, {self._member(name, registration.url): now + registration.ttl_s})
        previous_raw, _, _ = pipe.execute()
        previous = None if previous_raw is None else StoredReplica.model_validate_json(previous_raw)
        if previous is None or not previous.alive(now):
            changes.append("replica_added")
        elif previous.ready != stored.ready or previous.info != stored.info:
            changes.append("replica_updated")
        for change in changes:
            self.publish(name, change)
        return self.get(name)

    def deregister(self, name: str, url: str) -> ModelRecord:
        if self.redis.get(self._model_key(name)) is None:
            raise ModelNotFound(name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self._replicas_key(name), url)
        pipe.zrem(self._expiry_key, self._member(name, url))
        removed, _ = pipe.execute()
        if not removed:
            raise NotFound(f"model {name} has no replica at {url}", param="url")
        self.publish(name, "replica_removed")
        return self.get(name)

    def delete(self, name: str) -> None:
        replicas_key = self._replicas_key(name)
        urls = [str(url) for url in self.redis.hkeys(replicas_key)]  # type: ignore[union-attr]
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._model_key(name))
        pipe.delete(replicas_key)
        pipe.srem(self._names_key, name)
        if urls:
            pipe.zrem(self._expiry_key, *(self._member(name, url) for url in urls))
        deleted = pipe.execute()[0]
        if not deleted:
            raise ModelNotFound(name)
        self.publish(name, "model_deleted")

    def _update(self, name: str, change: str, **fields: Any) -> ModelRecord:
        def apply(current: ModelRecord | None) -> ModelRecord:
            if current is None:
                raise ModelNotFound(name)
            return current.model_copy(update=fields)

        existing, updated = self._change_record(name, apply)
        if updated != existing:
            self.publish(name, change)
        return self.get(name)

    def set_domains(self, name: str, update: DomainsUpdate) -> ModelRecord:
        domains = [_host_name(d, "domains") for d in update.domains]
        hosts = [_host_name(h, "hosts") for h in update.hosts]
        return self._update(
            name, "domains_updated", domains=domains, hosts=hosts, restricted=update.restricted
        )

    def set_routing(self, name: str, update: RoutingUpdate) -> ModelRecord:
        return self._update(name, "routing_updated", routing_policy=update.routing_policy)

    def set_aliases(self, name: str, update: AliasesUpdate) -> ModelRecord:
        aliases = list(dict.fromkeys(update.aliases))
        for alias in aliases:
            check_name(alias)
            if alias == name:
                raise InvalidRequest(f"alias {alias!r} is the model's own name", param="aliases")
        taken = self._names_taken_by_others(name)
        clashes = sorted(set(aliases) & taken)
        if clashes:
            raise InvalidRequest(f"aliases already name another model: {', '.join(clashes)}", param="aliases")
        return self._update(name, "aliases_updated", aliases=aliases)

    def _names_taken_by_others(self, name: str) -> set[str]:
        taken: set[str] = set()
        for other in self.list_models().models:
            if other.name != name:
                taken.add(other.name)
                taken.update(other.aliases)
        return taken

    # ---------------------------------------------------------------- expiry

    def reap_expired(self) -> list[tuple[str, str]]:
        """Remove replicas whose lease has passed and announce each one."""
        members = self._reap(keys=[self._expiry_key], args=[self.clock(), self._replicas_prefix()])
        removed: list[tuple[str, str]] = []
        for member in members:
            name, _, url = member.partition("\n")
            removed.append((name, url))
            self.publish(name, "replica_expired")
        return removed


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _host_name(value: str, param: str) -> str:
    host = value.strip().lower().rstrip(".")
    if not _HOST.match(host):
        raise InvalidRequest(f"{value!r} is not a valid host name", param=param)
    return host
