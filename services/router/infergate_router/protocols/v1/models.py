"""KServe v1 shapes.

Streaming a generative model (``"stream": true`` at the top level or in
``parameters``) answers ``text/event-stream`` events, each

    {"index": <instance>, "choice": <n index>, "text": "<new text>", "finish_reason": null}

(``finish_reason`` set on the last event of a choice), then
``{"usage": {...}}`` and ``[DONE]``; a failure is ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    instances: list[Any] | None = None
    inputs: list[Any] | None = None
    parameters: dict[str, Any] | None = None
    stream: bool | None = None

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        if (self.instances is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'instances' and 'inputs'")
        if not (self.instances or self.inputs):
            raise ValueError("'instances' must not be empty")
        return self

    def items(self) -> tuple[list[Any], str]:
        if self.instances is not None:
            return self.instances, "instances"
        return self.inputs or [], "inputs"


class PredictResponse(BaseModel):
    predictions: list[Any]
    offsets_mapping: list[Any] | None = None


class ModelNames(BaseModel):
    models: list[str]


class ModelReady(BaseModel):
    name: str
    ready: bool


class StreamChunk(BaseModel):
    index: int
    choice: int
    text: str
    finish_reason: str | None = None
