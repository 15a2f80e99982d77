"""Which models a request may reach: the registry's records, cached in the
process, and the domain rules of architecture.md ("Domains and routing").

The cache is refetched after ``registry_cache_ttl_s`` and dropped as soon as
the registry publishes a change (see :mod:`infergate_router.registry_changes`).
"""

from __future__ import annotations

import contextlib
import threading
import time

import requests

from infergate_common.errors import ModelNotFound, ServiceUnavailable, from_payload
from infergate_common.registry_api import ModelList, ModelRecord

# Host names whose model lists are kept per fetched list (clients choose the
# Host header, so the cache is bounded).
MAX_CACHED_HOSTS = 256
# A name the cached list does not hold makes the process ask the registry
# again, at most this often: a model registered while the change channel was
# down (a Redis restart) is found at once, and a flood of unknown names costs
# the registry at most one fetch per interval per process.
MISS_REFETCH_INTERVAL_S = 1.0


def normalise_host(host: str | None) -> str:
    """``Example.COM:8080`` -> ``example.com`` (IPv6 literals keep their brackets)."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


class ModelDirectory:
    """The registry's model list as this process last saw it."""

    def __init__(self, registry_url: str, ttl_s: float, connect_timeout_s: float) -> None:
        self.url = registry_url.rstrip("/") + "/registry/models"
        self.ttl_s = ttl_s
        self.timeout = (connect_timeout_s, max(connect_timeout_s, 5.0))
        self.session = requests.Session()
        self.session.trust_env = False
        self._lock = threading.Lock()
        self._models: list[ModelRecord] | None = None
        self._fetched_at = 0.0
        self._miss_checked_at = 0.0
        self._generation = 0
        # reachable() per host, for the model list it was computed from.
        self._by_host: tuple[list[ModelRecord], dict[str, list[ModelRecord]]] | None = None

    def invalidate(self) -> None:
        with self._lock:
            self._models = None
            self._generation += 1

    def models(self) -> list[ModelRecord]:
        """All records; one fetch at a time when the cache is stale."""
        models = self._fresh()
        if models is not None:
            return models
        with self._lock:
            models = self._fresh()
            if models is not None:
                return models
            return self._fetch_and_store()

    def _fetch_and_store(self) -> list[ModelRecord]:
        """Fetch the list (the lock held) and keep it, unless a change
        message arrived meanwhile (the fetched list may predate it)."""
        generation = self._generation
        fetched = self._fetch()
        if generation == self._generation:
            self._models, self._fetched_at = fetched, time.monotonic()
        return fetched

    def _fresh(self) -> list[ModelRecord] | None:
        models = self._models
        if models is not None and time.monotonic() - self._fetched_at < self.ttl_s:
            return models
        return None

    def _fetch(self) -> list[ModelRecord]:
        try:
            response = self.session.get(self.url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServiceUnavailable(f"model registry unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            try:
                body = response.json()
            except ValueError:
                body = None
            error = from_payload(response.status_code, body)
            raise ServiceUnavailable(f"model registry unavailable: {error.message}")
        return ModelList.model_validate_json(response.content).models

    # ------------------------------------------------------------- routing

    def reachable(self, host: str | None) -> list[ModelRecord]:
        """Models a request on ``host`` may use: the models whose host names
        include it, else every model not restricted to its own host names."""
        models = self.models()
        wanted = normalise_host(host)
        cache = self._by_host
        if cache is None or cache[0] is not models:
            cache = self._by_host = (models, {})
        found = cache[1].get(wanted)
        if found is None:
            own = [model for model in models if wanted in model.host_names()]
            found = own or [model for model in models if not model.restricted]
            if len(cache[1]) < MAX_CACHED_HOSTS:
                cache[1][wanted] = found
        return found

    def resolve(self, host: str | None, name: str) -> ModelRecord:
        """The model ``name`` (or one of its aliases) as seen from ``host``."""
        found = self._find(host, name)
        if found is None:
            self._refetch_after_miss()
            # Again even when this miss did not refetch: the miss that held
            # the lock meanwhile may have stored a list that has the model.
            found = self._find(host, name)
        if found is None:
            raise ModelNotFound(name)
        return found

    def _find(self, host: str | None, name: str) -> ModelRecord | None:
        models = self.reachable(host)
        for model in models:
            if model.name == name:
                return model
        for model in models:
            if name in model.aliases:
                return model
        return None

    def _refetch_after_miss(self) -> None:
        """Refetch the list after a miss, unless it (or another miss's
        refetch) is younger than :data:`MISS_REFETCH_INTERVAL_S`."""
        with self._lock:
            now = time.monotonic()
            if now - max(self._fetched_at, self._miss_checked_at) < MISS_REFETCH_INTERVAL_S:
                return
            self._miss_checked_at = now
            with contextlib.suppress(ServiceUnavailable):  # the cached list stands
                self._fetch_and_store()

    def close(self) -> None:
        self.session.close()
