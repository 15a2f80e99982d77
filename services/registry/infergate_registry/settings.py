"""The registry's one settings object, read from ``INFERGATE_*`` variables."""

from __future__ import annotations

from pydantic import BaseModel, Field

from infergate_common.streams import DEFAULT_PREFIX


class RegistrySettings(BaseModel):
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    # Prefix of every Redis key and of the change channel (shared with routers and workers).
    stream_prefix: str = DEFAULT_PREFIX
    # How often expired replicas are swept out and announced; 0 turns the sweeper off
    # (listings still hide expired replicas, they are only not announced).
    reap_interval_s: float = Field(0.5, ge=0)
    # Required (Authorization: Bearer) on every write route; empty: writes are open.
    internal_token: str = Field("", repr=False)
    # Required on /admin/keys; empty: the admin API is switched off.
    admin_token: str = Field("", repr=False)
    # A replica registers only a URL whose host is the address it connects from.
    check_replica_address: bool = True
    # A registration's ttl_s above this is lowered to it.
    max_replica_ttl_s: float = Field(60.0, gt=0)
