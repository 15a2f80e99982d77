"""Command line of worker-hf: KServe's argument names (``--max_model_len``,
also ``--max-model-len``), each one a field of :class:`HFWorkerSettings`.
Flags override the ``INFERGATE_*`` environment."""

from __future__ import annotations

import argparse
import logging
import types
from collections.abc import Sequence
from typing import Any, Union, get_args, get_origin

from pydantic import ValidationError

from infergate_common.errors import StartupError
from infergate_common.settings import load_settings

from .settings import HFWorkerSettings

log = logging.getLogger(__name__)

# Extra spellings KServe accepts for a field.
_ALIASES: dict[str, list[str]] = {"max_model_len": ["--max_length", "--max-length"]}


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
        prog="python -m infergate_worker_hf",
        description="Serve a Hugging Face model with transformers behind the infergate worker API.",
    )
    for name, field in HFWorkerSettings.model_fields.items():
        flags = [f"--{name}"]
        if "_" in name:
            flags.append(f"--{name.replace('_', '-')}")
        flags.extend(_ALIASES.get(name, []))
        annotation = _unwrap_optional(field.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None}
        if annotation is bool:
            kwargs["action"] = "store_true"
        elif get_origin(annotation) is list:
            kwargs["type"] = _comma_list
        else:
            kwargs["type"] = str
        parser.add_argument(*flags, **kwargs)
    return parser


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_settings(argv: Sequence[str] | None = None) -> HFWorkerSettings:
    """Settings from the environment, overridden by ``argv``; unknown flags
    (vLLM engine flags the launcher passes along) are logged and ignored."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        log.warning("ignoring arguments worker-hf does not use", extra={"ignored": unknown})
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        return load_settings(HFWorkerSettings, **overrides)
    except StartupError as exc:
        if isinstance(exc.__cause__, ValidationError):
            raise StartupError(_one_line(exc.__cause__)) from exc
        raise
