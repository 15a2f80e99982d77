"""The keys a router process accepts, from three sources:

* ``INFERGATE_API_KEYS``: plain keys, every model, no limits (kept for
  existing installs; hashed when the process starts);
* the keys file (``INFERGATE_API_KEYS_FILE``, a mounted Secret): JSON, a
  list of records or ``{"keys": [...]}``; each with ``key_sha256`` (or
  ``key``, hashed on reading) and optionally ``id``, ``name``, ``models``,
  ``rpm``, ``tpm``, ``max_concurrent``, ``expires_at``, ``metadata``. The
  file is read again when it changes (checked at most once a second), so a
  Secret update needs no restart;
* the admin API's keys in Redis (``P:auth:keys``), cached and dropped
  whenever the registry announces ``keys_changed`` (and refetched after
  ``key_cache_ttl_s`` regardless).

:meth:`KeyStore.lookup` hashes the presented key and looks the digest up in
a dictionary: no secret is compared in Python.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import redis
from pydantic import ValidationError

from infergate_common.api_keys import ApiKeyRecord, digest, keys_hash
from infergate_common.errors import ServiceUnavailable

log = logging.getLogger(__name__)

FILE_CHECK_S = 1.0
# A key not in the cached admin keys refetches them when the copy is older
# than this, so a key just created works at once, and a flood of wrong keys
# costs at most one read a second per process.
MISS_REFRESH_S = 1.0

Index = dict[str, ApiKeyRecord]


def _index(records: list[ApiKeyRecord]) -> Index:
    return {record.key_sha256: record for record in records}


def static_records(keys: list[str]) -> list[ApiKeyRecord]:
    return [ApiKeyRecord(id="s" + digest(key)[:11], name="static", key_sha256=digest(key)) for key in keys]


def parse_keys_file(text: str) -> list[ApiKeyRecord]:
    """The records of a keys file; ``ValueError`` with the reason when it is wrong."""
    data: Any = json.loads(text) if text.strip() else []
    entries = data.get("keys", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError('expected a JSON list of keys or {"keys": [...]}')
    records = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"keys[{index}] is not an object")
        entry = dict(entry)
        plain = entry.pop("key", None)
        if plain is not None:
            entry.setdefault("key_sha256", digest(str(plain)))
        if "key_sha256" not in entry:
            raise ValueError(f"keys[{index}] has neither key_sha256 nor key")
        entry.setdefault("id", "f" + str(entry["key_sha256"]).lower()[:11])
        try:
            records.append(ApiKeyRecord.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ValueError(f"keys[{index}].{where}: {first.get('msg')}") from exc
    return records


class KeysFile:
    """A keys file, read again when its modification time or size changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._index: Index = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def index(self) -> Index:
        now = time.monotonic()
        if now - self._checked >= FILE_CHECK_S:
            with self._lock:
                if now - self._checked >= FILE_CHECK_S:
                    self._checked = now
                    self._reload()
        return self._index

    def _reload(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            if self._stamp is not None:
                log.error("keys file %s unreadable, keeping the keys read before: %s", self.path, exc)
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, encoding="utf-8") as handle:
                records = parse_keys_file(handle.read())
        except (OSError, ValueError) as exc:
            log.error("keys file %s is invalid, keeping the keys read before: %s", self.path, exc)
            self._stamp = stamp
            return
        self._index, self._stamp = _index(records), stamp
        log.info("keys file read", extra={"keys": len(records)})


class AdminKeys:
    """The admin API's keys in Redis, cached until a change message or the TTL."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: float) -> None:
        self.client = client
        self.key = keys_hash(prefix)
        self.ttl_s = ttl_s
        self._index: Index | None = None
        self._fetched_at = 0.0
        self._generation = 0
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._index = None
            self._generation += 1

    def find(self, wanted: str) -> ApiKeyRecord | None:
        record = self.index().get(wanted)
        if record is None and time.monotonic() - self._fetched_at >= MISS_REFRESH_S:
            self.invalidate()
            record = self.index().get(wanted)
        return record

    def index(self) -> Index:
        cached = self._index
        if cached is not None and time.monotonic() - self._fetched_at < self.ttl_s:
            return cached
        with self._lock:
            cached = self._index
            if cached is not None and time.monotonic() - self._fetched_at < self.ttl_s:
                return cached
            generation = self._generation
            try:
                raw = self.client.hgetall(self.key)
            except (redis.RedisError, OSError) as exc:
                log.warning("cannot read API keys from Redis: %s", exc)
                raise ServiceUnavailable("the key store (Redis) is unreachable") from exc
            records = []
            for value in raw.values():  # type: ignore[union-attr]
                try:
                    records.append(ApiKeyRecord.model_validate_json(value))
                except ValidationError:
                    log.error("skipped an unreadable key record in Redis")
            index = _index(records)
            if generation == self._generation:
                self._index, self._fetched_at = index, time.monotonic()
            return index


class KeyStore:
    def __init__(
        self,
        static: list[str],
        file: KeysFile | None,
        admin: AdminKeys | None,
        required: bool,
    ) -> None:
        self.static = _index(static_records(static))
        self.file = file
        self.admin = admin
        # Keys are required when asked for, or when keys are given at start.
        self.required = required or bool(static) or file is not None

    def invalidate(self) -> None:
        if self.admin is not None:
            self.admin.invalidate()

    def lookup(self, secret: str, now: float | None = None) -> ApiKeyRecord | None:
        """The live record of ``secret``, or None (unknown, revoked or expired).
        Raises :class:`ServiceUnavailable` only when the admin keys cannot be
        read and the key is in no other source."""
        wanted = digest(secret)
        record = self.static.get(wanted)
        if record is None and self.file is not None:
            record = self.file.index().get(wanted)
        if record is None and self.admin is not None:
            record = self.admin.find(wanted)
        if record is None or record.expired(now):
            return None
        return record
