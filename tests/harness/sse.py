"""Reading server-sent events off a ``requests`` response, one event at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests


@dataclass
class Event:
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def done(self) -> bool:
        return self.data == "[DONE]"


def events(response: requests.Response) -> Iterator[Event]:
    """Events in arrival order; comment lines (keep-alives) are skipped."""
    data: list[str] = []
    event_id: str | None = None
    for raw in response.iter_lines(chunk_size=1, decode_unicode=False):
        line = raw.decode("utf-8")
        if not line:
            if data:
                yield Event("\n".join(data), event_id)
            data, event_id = [], None
        elif line.startswith(":"):
            continue
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif line.startswith("id:"):
            event_id = line[3:].strip()
    if data:
        yield Event("\n".join(data), event_id)
