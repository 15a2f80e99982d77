"""The WSGI entry point gunicorn loads: ``infergate_registry.wsgi:app``."""

from __future__ import annotations

from infergate_common.logs import configure_logging
from infergate_common.settings import load_settings

from .app import create_app
from .settings import RegistrySettings

configure_logging("registry")
app = create_app(load_settings(RegistrySettings))
