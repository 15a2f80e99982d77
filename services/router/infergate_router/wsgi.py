"""The WSGI entry point gunicorn loads (``infergate_router.wsgi:app``)."""

from __future__ import annotations

from infergate_common.logs import configure_logging

from .app import create_app
from .settings import settings_from_env

configure_logging("router")
app = create_app(settings_from_env())
