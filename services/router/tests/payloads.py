"""Golden files of payload shapes (ids and times normalised) and SSE
bodies read back as payloads. ``UPDATE_GOLDEN=1`` rewrites the files."""

from __future__ import annotations

import json
import os
from typing import Any

from conftest import GOLDEN


def normalised(payload: Any) -> Any:
    if isinstance(payload, dict):
        out = {}
        for key, value in payload.items():
            if key in ("id", "created") and isinstance(value, (str, int)):
                out[key] = f"<{key}>"
            else:
                out[key] = normalised(value)
        return out
    if isinstance(payload, list):
        return [normalised(item) for item in payload]
    return payload


def assert_golden(name: str, payload: Any) -> None:
    path = GOLDEN / f"{name}.json"
    actual = normalised(payload)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"golden file {path.name} is missing: UPDATE_GOLDEN=1 writes it, then review it"
    assert actual == json.loads(path.read_text()), f"{path.name} differs (UPDATE_GOLDEN=1 rewrites it)"


def sse_payloads(text: str) -> list[Any]:
    out = []
    for block in text.strip().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out
