"""The registry's HTTP API: models, their replicas, domains and aliases.

Routes (JSON; errors as :func:`infergate_common.errors.to_payload`):

* ``GET /healthz``, ``GET /readyz`` (Redis reachable).
* ``GET /registry/models`` -> :class:`ModelList` (only live replicas listed).
* ``GET /registry/models/<name>`` -> :class:`ModelRecord`, 404 unknown.
* ``POST /registry/models/<name>/replicas`` :class:`ReplicaRegistration`
  -> :class:`ModelRecord`: registers a replica or renews its heartbeat;
  the model record is created or updated from the worker's info.
* ``DELETE /registry/models/<name>/replicas?url=<replica url>``.
* ``DELETE /registry/models/<name>``.
* ``PUT /registry/models/<name>/domains`` :class:`DomainsUpdate`.
* ``PUT /registry/models/<name>/aliases`` :class:`AliasesUpdate`.
* ``PUT /registry/models/<name>/routing`` :class:`RoutingUpdate`: how routers
  choose among the model's replicas (a worker's ``--routing_policy`` sets it
  too, and wins at its next heartbeat).

A replica that misses heartbeats for ``ttl_s`` seconds leaves rotation. Every
change is published on the Redis channel :func:`changes_channel` as a JSON
:class:`ChangeMessage`; routers drop their cache when one arrives.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from .worker_api import Backend, Task, WorkerInfo


def changes_channel(prefix: str) -> str:
    return f"{prefix}:registry:changes"


class RoutingPolicy(StrEnum):
    """How a router picks one of a model's ready replicas
    (``infergate_router.routing_policies``)."""

    FEWEST_IN_FLIGHT = "fewest_in_flight"
    SESSION_AFFINITY = "session_affinity"
    PREFIX_AWARE = "prefix_aware"


class ReplicaRecord(BaseModel):
    url: str
    ready: bool = True
    last_seen: float = 0.0
    info: WorkerInfo | None = None


class ModelRecord(BaseModel):
    name: str
    model_id: str
    revision: str | None = None
    task: Task
    backend: Backend
    backend_reason: str = ""
    architecture: str | None = None
    max_model_len: int | None = None
    chat_template: bool = False
    encoder_decoder: bool = False
    # Reached as <name>.<domain> for each domain, and at each host.
    domains: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    # Restricted models answer only on their own host names.
    restricted: bool = False
    aliases: list[str] = Field(default_factory=list)
    created: int = 0
    routing_policy: RoutingPolicy = RoutingPolicy.FEWEST_IN_FLIGHT
    replicas: list[ReplicaRecord] = Field(default_factory=list)

    def host_names(self) -> set[str]:
        names = {f"{self.name}.{domain}".lower() for domain in self.domains}
        names.update(host.lower() for host in self.hosts)
        return names


class ModelList(BaseModel):
    models: list[ModelRecord]


class ReplicaRegistration(BaseModel):
    url: str
    info: WorkerInfo
    ready: bool = True
    ttl_s: float = Field(5.0, gt=0)
    domains: list[str] | None = None
    hosts: list[str] | None = None
    restricted: bool | None = None
    routing_policy: RoutingPolicy | None = None


class DomainsUpdate(BaseModel):
    domains: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    restricted: bool = False


class AliasesUpdate(BaseModel):
    aliases: list[str] = Field(default_factory=list)


class RoutingUpdate(BaseModel):
    routing_policy: RoutingPolicy


class ChangeMessage(BaseModel):
    model: str
    change: str
