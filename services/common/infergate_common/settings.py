"""One settings loader for every service.

Each service declares one pydantic model of its settings and reads it with
:func:`load_settings`, which takes ``INFERGATE_<FIELD>`` from the environment
(``INFERGATE_REDIS_URL`` for ``redis_url``). Tests build the model directly.
List fields accept JSON or comma-separated values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, TypeVar, get_origin

from pydantic import BaseModel, ValidationError

from .errors import StartupError

ENV_PREFIX = "INFERGATE_"

SettingsT = TypeVar("SettingsT", bound=BaseModel)


def _parse_list(raw: str) -> list[str]:
    raw = raw.strip()
    if raw.startswith("["):
        value = json.loads(raw)
        if not isinstance(value, list):
            raise ValueError("expected a JSON list")
        return [str(item) for item in value]
    return [part.strip() for part in raw.split(",") if part.strip()]


def load_settings(
    cls: type[SettingsT],
    environ: Mapping[str, str] | None = None,
    prefix: str = ENV_PREFIX,
    **overrides: Any,
) -> SettingsT:
    """Build ``cls`` from ``environ`` (default ``os.environ``) plus overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        key = prefix + name.upper()
        if key not in env:
            continue
        raw = env[key]
        origin = get_origin(field.annotation)
        try:
            values[name] = _parse_list(raw) if origin is list else raw
        except ValueError as exc:
            raise StartupError(f"{key}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise StartupError(f"invalid settings for {cls.__name__}: {exc}") from exc
