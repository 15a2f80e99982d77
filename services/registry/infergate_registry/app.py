"""The registry's Flask application factory."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from infergate_common.errors import InfergateError, InvalidRequest, NotFound, ServiceUnavailable, to_payload

from .access import check_credentials
from .admin import admin
from .api import health, registry
from .key_store import KeyStore
from .reaper import Reaper
from .settings import RegistrySettings
from .store import RegistryStore

log = logging.getLogger(__name__)


def create_app(settings: RegistrySettings) -> Flask:
    app = Flask("infergate-registry")
    app.config["INFERGATE_SETTINGS"] = settings
    connect_store(app, settings)
    check_credentials(app, settings)
    register_blueprints(app)
    register_error_handlers(app)
    start_reaper(app, settings)
    return app


def connect_store(app: Flask, settings: RegistrySettings) -> None:
    client = redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=10,
    )
    app.extensions["infergate_registry"] = RegistryStore(client, settings.stream_prefix)
    app.extensions["infergate_keys"] = KeyStore(client, settings.stream_prefix)


def register_blueprints(app: Flask) -> None:
    app.register_blueprint(health)
    app.register_blueprint(registry)
    app.register_blueprint(admin)


def register_error_handlers(app: Flask) -> None:
    def render(error: InfergateError) -> tuple[Response, int]:
        return jsonify(to_payload(error)), error.status

    @app.errorhandler(InfergateError)
    def _infergate_error(error: InfergateError) -> tuple[Response, int]:
        return render(error)

    @app.errorhandler(redis.RedisError)
    def _redis_error(error: redis.RedisError) -> tuple[Response, int]:
        log.warning("redis error: %s", error)
        return render(ServiceUnavailable("registry storage (Redis) unavailable"))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[Response, int]:
        status = error.code or 500
        cls = NotFound if status == 404 else InvalidRequest
        return render(cls(error.description or error.name, status=status))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> tuple[Response, int]:
        log.exception("unexpected registry error")
        return render(InfergateError(f"internal error: {type(error).__name__}"))


def start_reaper(app: Flask, settings: RegistrySettings) -> None:
    if settings.reap_interval_s > 0:
        app.extensions["infergate_reaper"] = Reaper(
            app.extensions["infergate_registry"], settings.reap_interval_s
        ).start()
