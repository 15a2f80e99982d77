"""Who may call what on the registry.

* Reads (``GET``) and the probes: anyone who can reach the registry (the
  routers read the model list often, and the NetworkPolicy limits who can).
* Writes under ``/registry/``: the internal credential.
* ``/admin/``: the admin token.
* A replica registration: besides the credential, a valid URL whose host is
  the caller's own address (:mod:`infergate_registry.replica_urls`), and a
  ``ttl_s`` no longer than ``max_replica_ttl_s``.
"""

from __future__ import annotations

import logging

from flask import Flask, request

from infergate_common.errors import AuthenticationFailed, PermissionDenied
from infergate_common.internal_auth import bearer, token_matches, warn_if_open
from infergate_common.registry_api import ReplicaRegistration

from . import replica_urls
from .settings import RegistrySettings

log = logging.getLogger(__name__)

READS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_credentials(app: Flask, settings: RegistrySettings) -> None:
    warn_if_open(log, "registry", settings.internal_token)

    @app.before_request
    def credential() -> None:
        presented = bearer(request.headers.get("Authorization"))
        if request.path.startswith("/admin/"):
            if not settings.admin_token:
                raise PermissionDenied("the admin API is switched off: set INFERGATE_ADMIN_TOKEN")
            if not token_matches(settings.admin_token, presented):
                raise AuthenticationFailed("the admin API needs the admin token", code="invalid_admin_token")
            return
        if request.method in READS or not request.path.startswith("/registry/"):
            return
        if settings.internal_token and not token_matches(settings.internal_token, presented):
            log.warning(
                "refused a registry write without the internal credential",
                extra={"remote": request.remote_addr, "path": request.path, "method": request.method},
            )
            raise AuthenticationFailed(
                "registry writes need the internal credential", code="internal_credential"
            )


def admit_registration(registration: ReplicaRegistration, settings: RegistrySettings) -> ReplicaRegistration:
    host = replica_urls.validate(registration.url)
    if settings.check_replica_address:
        try:
            replica_urls.check_own_address(host, request.remote_addr)
        except PermissionDenied:
            log.warning(
                "refused a registration of another address",
                extra={"remote": request.remote_addr, "url": registration.url},
            )
            raise
    if registration.ttl_s > settings.max_replica_ttl_s:
        registration = registration.model_copy(update={"ttl_s": settings.max_replica_ttl_s})
    return registration
