"""A worker-hf process under test and the command that starts it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from harness.processes import Process


@dataclass
class HFWorker:
    """A running worker-hf process and its base URL."""

    url: str
    process: Process
    model_dir: Path

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=kwargs.pop("timeout", 60), **kwargs)

    def info(self) -> dict[str, Any]:
        response = self.get("/info")
        response.raise_for_status()
        return dict(response.json())

    def encode(self, inputs: list[str], **options: Any) -> requests.Response:
        body = {"request_id": options.pop("request_id", "test"), "inputs": inputs, **options}
        return self.post("/encode", body)


def worker_command(model_dir: Path | str, port: int, redis_url: str, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "infergate_worker_hf",
        "--model_name", Path(model_dir).name, "--model_id", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--redis_url", redis_url, *flags,
    ]  # fmt: skip
