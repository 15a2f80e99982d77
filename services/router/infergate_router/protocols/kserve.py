"""What KServe's v1 and v2 protocols share: the error shape, the optional
request parameters, and how a predict call reaches a worker."""

from __future__ import annotations

import json
from typing import Any

from flask import Response
from pydantic import BaseModel, ConfigDict, Field

from infergate_common.errors import InfergateError, InvalidRequest
from infergate_common.limits import SEED_MAX, SEED_MIN
from infergate_common.registry_api import ModelRecord
from infergate_common.worker_api import (
    EncodeRequest,
    EncodeResponse,
    GenerateRequest,
    GenerateResponse,
    SamplingParams,
)

from .. import limits
from ..client_watch import client_watch
from ..limits import logit_bias_ids
from ..request_scope import current
from ..services import services
from .edge import run_all, validate


def render_error(error: InfergateError) -> Response:
    return Response(json.dumps({"error": error.message}), status=error.status, mimetype="application/json")


class Parameters(BaseModel):
    """Request ``parameters``: the encoder flags (KServe's names) and, for
    generative models, sampling (OpenAI's names)."""

    model_config = ConfigDict(extra="ignore")

    return_probabilities: bool | None = None
    return_raw_logits: bool | None = None
    return_offsets_mapping: bool | None = None
    return_labels: bool | None = None
    stream: bool | None = None
    n: int | None = Field(None, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # Sampling; for fill mask, how many tokens to return per mask.
    top_k: int | None = Field(None, ge=-1)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    ignore_eos: bool | None = None
    # Tabular models: class probabilities (scikit-learn), untransformed margins (XGBoost, LightGBM).
    predict_proba: bool | None = None
    raw_margin: bool | None = None

    def merged(self, other: Parameters | None) -> Parameters:
        if other is None:
            return self
        return self.model_copy(update=other.model_dump(exclude_none=True))

    def sampling(self) -> SamplingParams:
        values: dict[str, Any] = {
            "n": self.n,
            "max_tokens": self.max_tokens or self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "ignore_eos": self.ignore_eos,
            "logit_bias": logit_bias_ids(self.logit_bias),
        }
        if self.stop is not None:
            values["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        return SamplingParams.model_validate({k: v for k, v in values.items() if v is not None})


def parameters(raw: Any, where: str = "parameters") -> Parameters:
    if raw is None:
        return Parameters()
    return validate(Parameters, raw, prefix=f"{where}.")


def encode(model: ModelRecord, request_id: str, texts: list[str], params: Parameters) -> EncodeResponse:
    if params.return_probabilities and params.return_raw_logits:
        raise InvalidRequest("return_probabilities and return_raw_logits are mutually exclusive")
    svc = services()
    req = EncodeRequest(
        request_id=request_id,
        inputs=texts,
        return_probabilities=params.return_probabilities,
        return_raw_logits=params.return_raw_logits,
        return_offsets_mapping=params.return_offsets_mapping,
        return_labels=params.return_labels,
        top_k=params.top_k if params.top_k is not None and params.top_k > 0 else None,
    )
    response = svc.dispatcher.call(model, lambda url: svc.workers.encode(url, req))
    svc.metrics.tokens(model.name, response.usage.prompt_tokens, 0)
    return response


class Prompt(BaseModel):
    """A generative instance: a string, or an object with its own parameters."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    parameters: Parameters | None = None
    params: Parameters | None = None


def prompts(instances: list[Any], where: str) -> list[Prompt]:
    parsed = []
    for index, instance in enumerate(instances):
        if isinstance(instance, str):
            parsed.append(Prompt(prompt=instance))
        else:
            parsed.append(validate(Prompt, instance, prefix=f"{where}.{index}."))
    return parsed


def generate_requests(
    model: ModelRecord, request_id: str, items: list[Prompt], shared: Parameters, stream: bool
) -> list[GenerateRequest]:
    """One generation per prompt, each within the limits."""
    limits.check_prompts(len(items), "instances")
    requests = []
    for index, item in enumerate(items):
        params = shared.merged(item.parameters).merged(item.params)
        sampling = params.sampling()
        limits.check_generation(sampling, model)
        requests.append(
            GenerateRequest(
                request_id=request_id if len(items) == 1 else f"{request_id}-{index}",
                prompt=item.prompt,
                params=sampling,
                stream=stream,
            )
        )
    return requests


def generate_all(model: ModelRecord, requests: list[GenerateRequest]) -> list[GenerateResponse]:
    svc = services()

    def one(req: GenerateRequest) -> GenerateResponse:
        response = svc.dispatcher.generate(model, req, client_watch(current().environ))
        svc.metrics.tokens(model.name, response.usage.prompt_tokens, response.usage.completion_tokens)
        return response

    return run_all([lambda req=req: one(req) for req in requests])  # type: ignore[misc]


def texts(instances: list[Any], where: str) -> list[str]:
    """Inputs of a non-generative model: strings (or ``{"text": ...}``)."""
    out = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and isinstance(instance.get("text"), str):
            instance = instance["text"]
        if not isinstance(instance, str):
            raise InvalidRequest(f"'{where}.{index}': expected a string", param=f"{where}.{index}")
        out.append(instance)
    return out
