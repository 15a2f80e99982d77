"""Validation of a batch input file at upload, line by line as it streams
in: the first bad line is refused with a 400 that names it, and so are a
file over the size limit or with more lines than the line limit.

What is checked here is the file's structure (each line a JSON object with
a unique ``custom_id``, ``method: POST``, a supported ``url`` and a
``body`` object). Whether a body is a valid request for its model is known
only when the line runs: such lines land in the batch's error file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import IO

from pydantic import ValidationError

from infergate_common.errors import InvalidRequest

from .objects import ENDPOINTS, InputLine


def describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    return f"'{where}': {message}" if where else message


def parse_line(raw: bytes, number: int) -> InputLine:
    """One line as an :class:`InputLine`; 400 naming the line otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"line {number} is not UTF-8: {exc.reason}", param="file") from exc
    if not text.strip():
        raise InvalidRequest(f"line {number} is empty; each line must be one JSON request", param="file")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"line {number} is not valid JSON: {exc}", param="file") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"line {number} must be a JSON object", param="file")
    try:
        line = InputLine.model_validate(value)
    except ValidationError as exc:
        raise InvalidRequest(f"line {number}: {describe(exc)}", param="file") from exc
    if line.url not in ENDPOINTS:
        raise InvalidRequest(
            f"line {number}: url {line.url!r} is not supported; use one of {', '.join(ENDPOINTS)}",
            param="file",
        )
    return line


def copy_validated(
    source: Iterable[bytes], target: IO[bytes], max_bytes: int, max_lines: int
) -> tuple[int, int]:
    """Copy ``source`` (its lines) to ``target`` while validating it;
    returns ``(bytes written, lines)`` (a missing last newline is added)."""
    size = 0
    written = 0
    count = 0
    seen: dict[str, int] = {}
    for raw in source:
        size += len(raw)
        if size > max_bytes:
            raise InvalidRequest(
                f"the file exceeds the size limit of {max_bytes} bytes (at line {count + 1})", param="file"
            )
        count += 1
        if count > max_lines:
            raise InvalidRequest(
                f"the file has more than {max_lines} lines, the limit of one batch", param="file"
            )
        line = parse_line(raw, count)
        first = seen.setdefault(line.custom_id, count)
        if first != count:
            raise InvalidRequest(
                f"line {count}: custom_id {line.custom_id!r} is already used on line {first}; "
                "each request needs its own",
                param="file",
            )
        stored = raw if raw.endswith(b"\n") else raw + b"\n"
        target.write(stored)
        written += len(stored)
    if count == 0:
        raise InvalidRequest("the file is empty; a batch file holds one JSON request per line", param="file")
    return written, count
