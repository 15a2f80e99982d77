"""A small SSE reader over ``requests`` for the tests: yields ``(id, data)``
with ``data`` parsed as JSON (``"[DONE]"`` kept as the string)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import requests


def events(response: requests.Response) -> Iterator[tuple[str | None, Any]]:
    event_id: str | None = None
    data: list[str] = []
    for raw in response.iter_lines(decode_unicode=True):
        if raw is None:
            continue
        line = raw
        if line == "":
            if data:
                text = "\n".join(data)
                yield event_id, text if text == "[DONE]" else json.loads(text)
            event_id, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
