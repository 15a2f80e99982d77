"""Helpers of the generation tests: in-process engines over the test
models, and a reader of a request's Redis stream. Test modules import the
fixture as ``gen_engine_fixture``; pytest knows it as ``gen_engine``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from harness.redis_server import RedisServer

from infergate_common.streams import StreamEvent, decode_event, is_final, stream_key
from infergate_common.worker_api import GenerateRequest, GenerateResponse, Task
from infergate_worker_hf.generation.engine import GenerationEngine
from infergate_worker_hf.settings import HFWorkerSettings

torch.set_num_threads(1)

EngineFactory = Callable[..., GenerationEngine]


@pytest.fixture(scope="session", name="gen_engine")
def gen_engine_fixture(models: Path, redis_server: RedisServer) -> Iterator[EngineFactory]:
    """``gen_engine(name, **settings)``: a loaded in-process engine, shared by
    every test asking for the same model and settings."""
    engines: dict[tuple[Any, ...], GenerationEngine] = {}

    def get(name: str = "tiny-llama", **overrides: Any) -> GenerationEngine:
        key = (name, *sorted(overrides.items()))
        if key not in engines:
            task = Task.TEXT2TEXT_GENERATION if "t5" in name else Task.TEXT_GENERATION
            settings = HFWorkerSettings(
                model_name=name, model_id=str(models / name), redis_url=redis_server.url, **overrides
            )
            engine = GenerationEngine(settings, task, redis.Redis.from_url(redis_server.url))
            engine.load()
            engines[key] = engine
        return engines[key]

    yield get
    for engine in engines.values():
        engine.shutdown()


def request(prompt: Any = "Hello, my dog", stream: bool = False, **params: Any) -> GenerateRequest:
    body: dict[str, Any] = {"request_id": uuid.uuid4().hex, "params": params, "stream": stream}
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        body["messages"] = prompt
    else:
        body["prompt"] = prompt
    return GenerateRequest.model_validate(body)


def generate(engine: GenerationEngine, prompt: Any = "Hello, my dog", **params: Any) -> GenerateResponse:
    return engine.generate(request(prompt, **params))


def read_stream(
    client: redis.Redis,
    prefix: str,
    request_id: str,
    timeout_s: float = 30,
    into: list[StreamEvent] | None = None,
) -> list[StreamEvent]:
    """Every event of a request's stream, through the final one, appended to
    ``into`` (when given) as they arrive."""
    key = stream_key(prefix, request_id)
    events: list[StreamEvent] = [] if into is None else into
    last = "0-0"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = client.xread({key: last}, block=500, count=100)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                event = decode_event(fields)
                events.append(event)
                if is_final(event):
                    return events
    raise AssertionError(f"stream {key} did not end within {timeout_s}s: {events[-5:]}")
