"""Command line of worker-tabular: KServe's argument names (``--model_dir``,
``--nthread``; ``--model-dir`` too), each one a field of
:class:`TabularWorkerSettings`. Flags override the ``INFERGATE_*``
environment."""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from typing import Any, Union, get_args, get_origin

from pydantic import ValidationError

from infergate_common.errors import StartupError
from infergate_common.settings import load_settings

from .settings import TabularWorkerSettings


def _comma_list(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infergate_worker_tabular",
        description="Serve an XGBoost, LightGBM or scikit-learn model behind the infergate worker API.",
    )
    for name, field in TabularWorkerSettings.model_fields.items():
        flags = [f"--{name}"]
        if "_" in name:
            flags.append(f"--{name.replace('_', '-')}")
        annotation = _unwrap_optional(field.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": field.description}
        if annotation is bool:
            kwargs["action"] = "store_true"
        elif get_origin(annotation) is list:
            kwargs["type"] = _comma_list
        else:
            kwargs["type"] = str
        parser.add_argument(*flags, **kwargs)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> TabularWorkerSettings:
    """Settings from the environment, overridden by ``argv``."""
    args = build_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        return load_settings(TabularWorkerSettings, **overrides)
    except StartupError as exc:
        cause = exc.__cause__
        if isinstance(cause, ValidationError):
            parts = []
            for error in cause.errors():
                where = ".".join(str(part) for part in error.get("loc", ()))
                message = str(error.get("msg", "")).removeprefix("Value error, ")
                parts.append(f"--{where}: {message}" if where else message)
            raise StartupError("; ".join(parts)) from exc
        raise
