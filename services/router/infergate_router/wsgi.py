"""The WSGI entry point gunicorn loads (``infergate_router.wsgi:app``): the
fast path for the hot OpenAI routes in front of the Flask app."""

from __future__ import annotations

from infergate_common.logs import configure_logging

from .app import create_app
from .fast_path import FastPath
from .settings import settings_from_env

configure_logging("router")
app = FastPath(create_app(settings_from_env()))
