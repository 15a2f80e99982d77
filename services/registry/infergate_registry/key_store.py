"""API keys in Redis, for the admin API (see :mod:`infergate_common.api_keys`).

One hash, ``P:auth:keys``: key id -> :class:`ApiKeyRecord` JSON (the digest
of the secret, never the secret). Every change is published as
``keys_changed`` on the registry's change channel, so each router process
drops its copy at once (revocation takes effect within a second).
"""

from __future__ import annotations

import redis

from infergate_common.api_keys import KEYS_CHANGED, ApiKeyRecord, KeySpec, keys_hash, make_record
from infergate_common.errors import NotFound
from infergate_common.registry_api import ChangeMessage, changes_channel


class KeyStore:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.key = keys_hash(prefix)
        self.channel = changes_channel(prefix)

    def _announce(self, key_id: str) -> None:
        self.redis.publish(self.channel, ChangeMessage(model="", change=KEYS_CHANGED).model_dump_json())

    def list(self) -> list[ApiKeyRecord]:
        raw = self.redis.hgetall(self.key)
        records = [ApiKeyRecord.model_validate_json(value) for value in raw.values()]  # type: ignore[union-attr]
        return sorted(records, key=lambda record: (record.created, record.id))

    def get(self, key_id: str) -> ApiKeyRecord:
        raw = self.redis.hget(self.key, key_id)
        if raw is None:
            raise NotFound(f"no key with id {key_id}", param="id")
        return ApiKeyRecord.model_validate_json(raw)  # type: ignore[arg-type]

    def create(self, spec: KeySpec) -> tuple[str, ApiKeyRecord]:
        secret, record = make_record(spec)
        self.redis.hset(self.key, record.id, record.model_dump_json())
        self._announce(record.id)
        return secret, record

    def rotate(self, key_id: str) -> tuple[str, ApiKeyRecord]:
        """A new secret for the same id, scopes and limits; the old one stops working."""
        current = self.get(key_id)
        secret, record = make_record(
            KeySpec.model_validate(current.model_dump(include=set(KeySpec.model_fields))), key_id
        )
        record.created = current.created
        self.redis.hset(self.key, key_id, record.model_dump_json())
        self._announce(key_id)
        return secret, record

    def revoke(self, key_id: str) -> None:
        if not self.redis.hdel(self.key, key_id):
            raise NotFound(f"no key with id {key_id}", param="id")
        self._announce(key_id)
