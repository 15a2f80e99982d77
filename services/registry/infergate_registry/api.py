"""The registry's routes (see :mod:`infergate_common.registry_api`)."""

from __future__ import annotations

import logging
from typing import TypeVar

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ValidationError

from infergate_common.errors import InvalidRequest
from infergate_common.registry_api import AliasesUpdate, DomainsUpdate, ReplicaRegistration, RoutingUpdate

from .access import admit_registration
from .settings import RegistrySettings
from .store import RegistryStore

ModelT = TypeVar("ModelT", bound=BaseModel)

log = logging.getLogger(__name__)

health = Blueprint("health", __name__)
registry = Blueprint("registry", __name__, url_prefix="/registry")


def store() -> RegistryStore:
    return current_app.extensions["infergate_registry"]  # type: ignore[no-any-return]


def parse(model: type[ModelT]) -> ModelT:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        raise InvalidRequest(message, param=where or None) from exc


def as_json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


@health.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        store().ping()
    except redis.RedisError as exc:
        log.warning("redis unreachable: %s", exc)
        return jsonify({"ready": False, "reason": "redis unreachable"}), 503
    return jsonify({"ready": True}), 200


@registry.get("/models")
def list_models() -> Response:
    return as_json(store().list_models())


@registry.get("/models/<name>")
def get_model(name: str) -> Response:
    return as_json(store().get(name))


@registry.delete("/models/<name>")
def delete_model(name: str) -> Response:
    store().delete(name)
    return jsonify({"deleted": name})


@registry.post("/models/<name>/replicas")
def register_replica(name: str) -> Response:
    settings: RegistrySettings = current_app.config["INFERGATE_SETTINGS"]
    return as_json(store().register(name, admit_registration(parse(ReplicaRegistration), settings)))


@registry.delete("/models/<name>/replicas")
def deregister_replica(name: str) -> Response:
    url = request.args.get("url")
    if not url:
        raise InvalidRequest("query parameter 'url' is required", param="url")
    return as_json(store().deregister(name, url))


@registry.put("/models/<name>/domains")
def set_domains(name: str) -> Response:
    return as_json(store().set_domains(name, parse(DomainsUpdate)))


@registry.put("/models/<name>/aliases")
def set_aliases(name: str) -> Response:
    return as_json(store().set_aliases(name, parse(AliasesUpdate)))


@registry.put("/models/<name>/routing")
def set_routing(name: str) -> Response:
    return as_json(store().set_routing(name, parse(RoutingUpdate)))
