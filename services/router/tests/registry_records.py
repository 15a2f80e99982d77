"""Writing model records through the real registry's API, for states no
running worker is in (not ready, unreachable, no chat template, ...)."""

from __future__ import annotations

import requests

from infergate_common.registry_api import DomainsUpdate, ReplicaRegistration
from infergate_common.worker_api import Backend, Task, WorkerInfo


def register(
    registry_url: str,
    name: str,
    url: str,
    *,
    task: Task = Task.TEXT_GENERATION,
    ready: bool = True,
    chat_template: bool = True,
    encoder_decoder: bool = False,
    aliases: list[str] | None = None,
) -> None:
    info = WorkerInfo(
        name=name,
        model_id=f"test/{name}",
        task=task,
        backend=Backend.NULL,
        dtype="none",
        device="none",
        max_model_len=128,
        chat_template=chat_template,
        encoder_decoder=encoder_decoder,
        aliases=aliases or [],
    )
    body = ReplicaRegistration(url=url, info=info, ready=ready, ttl_s=600)
    response = requests.post(
        f"{registry_url}/registry/models/{name}/replicas",
        data=body.model_dump_json(),
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    response.raise_for_status()


def set_domains(registry_url: str, name: str, domains: list[str], hosts: list[str], restricted: bool) -> None:
    body = DomainsUpdate(domains=domains, hosts=hosts, restricted=restricted)
    response = requests.put(
        f"{registry_url}/registry/models/{name}/domains",
        data=body.model_dump_json(),
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    response.raise_for_status()


def set_aliases(registry_url: str, name: str, aliases: list[str]) -> None:
    response = requests.put(
        f"{registry_url}/registry/models/{name}/aliases", json={"aliases": aliases}, timeout=5
    )
    response.raise_for_status()
