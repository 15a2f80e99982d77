"""The admin API: API keys (see :mod:`infergate_common.api_keys`).

Every route requires ``Authorization: Bearer <admin token>``
(``INFERGATE_ADMIN_TOKEN``); without an admin token configured the API
answers 403.

* ``POST /admin/keys`` :class:`KeySpec` -> 201 ``{"key": <secret>, "record": {...}}``
  (the only time the secret is shown).
* ``GET /admin/keys`` -> ``{"keys": [record, ...]}`` (records without digests).
* ``GET /admin/keys/<id>`` -> record.
* ``POST /admin/keys/<id>/rotate`` -> 200 ``{"key": <new secret>, "record": {...}}``.
* ``DELETE /admin/keys/<id>`` -> ``{"revoked": <id>}``.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from infergate_common.api_keys import CreatedKey, KeySpec

from .api import as_json, parse
from .key_store import KeyStore

admin = Blueprint("admin", __name__, url_prefix="/admin")


def keys() -> KeyStore:
    return current_app.extensions["infergate_keys"]  # type: ignore[no-any-return]


@admin.post("/keys")
def create_key() -> Response:
    secret, record = keys().create(parse(KeySpec))
    return as_json(CreatedKey(key=secret, record=record.public()), status=201)


@admin.get("/keys")
def list_keys() -> Response:
    return jsonify({"keys": [record.public() for record in keys().list()]})


@admin.get("/keys/<key_id>")
def get_key(key_id: str) -> Response:
    return jsonify(keys().get(key_id).public())


@admin.post("/keys/<key_id>/rotate")
def rotate_key(key_id: str) -> Response:
    secret, record = keys().rotate(key_id)
    return as_json(CreatedKey(key=secret, record=record.public()))


@admin.delete("/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    keys().revoke(key_id)
    return jsonify({"revoked": key_id})
