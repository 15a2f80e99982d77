"""API keys: what a key may do, and how it is stored.

A key is a random string handed to its owner once; only its SHA-256 digest
is ever stored (in the registry's Redis hash ``P:auth:keys`` or in the
router's keys file), so a lookup is a dictionary access by digest and no
secret is compared byte by byte. Keys are long and random, so a plain
digest (no salt, no slow hash) is enough: there is nothing to guess.

Records travel as :class:`ApiKeyRecord` JSON; the admin API
(``/admin/keys`` on the registry) creates, lists, rotates and revokes them
and publishes ``keys_changed`` on the registry's change channel, which
every router process listens to.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What a key looks like: a recognisable prefix, then 43 url-safe characters (256 bits).
KEY_PREFIX = "igk-"
KEY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,31}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")

# The model change message's ``change`` when the keys change.
KEYS_CHANGED = "keys_changed"


def keys_hash(prefix: str) -> str:
    """The Redis hash of the admin API's keys: key id -> record JSON."""
    return f"{prefix}:auth:keys"


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "k" + secrets.token_hex(6)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyLimits(BaseModel):
    """Per key; ``None`` (or 0) is no limit. Windows are a sliding minute."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=0, description="requests per minute")
    tpm: int | None = Field(None, ge=0, description="tokens (prompt + completion) per minute")
    max_concurrent: int | None = Field(None, ge=0, description="requests in flight at once")

    def any(self) -> bool:
        return bool(self.rpm or self.tpm or self.max_concurrent)


class KeySpec(KeyLimits):
    """What a key may do: the fields a creator chooses."""

    name: str = Field("", max_length=200)
    # Model names or glob patterns (``llama-*``); the default is every model.
    models: list[str] = Field(default_factory=lambda: ["*"])
    # Unix time after which the key stops working; None: never.
    expires_at: float | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern or len(pattern) > 200:
                raise ValueError("a model pattern is 1 to 200 characters")
        return value

    def limits(self) -> KeyLimits:
        return KeyLimits(rpm=self.rpm, tpm=self.tpm, max_concurrent=self.max_concurrent)


class ApiKeyRecord(KeySpec):
    """A stored key: its spec, its id and the digest of its secret."""

    id: str
    key_sha256: str
    created: int = 0

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not KEY_ID.match(value):
            raise ValueError("a key id is 3 to 32 lowercase letters, digits and dashes")
        return value

    @field_validator("key_sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        value = value.lower()
        if not DIGEST.match(value):
            raise ValueError("key_sha256 is the hex SHA-256 digest of the key (64 characters)")
        return value

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now if now is not None else time.time()) >= self.expires_at

    def allows(self, model: str) -> bool:
        return any(pattern == model or fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def public(self) -> dict[str, Any]:
        """The record as listed: everything but the digest."""
        return self.model_dump(exclude={"key_sha256"})


class CreatedKey(BaseModel):
    """The answer to a create or rotate: the only time the secret is shown."""

    key: str
    record: dict[str, Any]


def make_record(spec: KeySpec, key_id: str | None = None) -> tuple[str, ApiKeyRecord]:
    """A new secret and its record (``key_id`` kept when rotating)."""
    secret = new_secret()
    record = ApiKeyRecord(
        **spec.model_dump(),
        id=key_id or new_key_id(),
        key_sha256=digest(secret),
        created=int(time.time()),
    )
    return secret, record
