"""The KServe v2 blueprint: server and model metadata, health, readiness
and ``/infer`` (a BYTES input tensor of shape ``[N]``; generative models
answer a BYTES tensor of the generated texts)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from infergate_common.errors import InfergateError, InvalidRequest
from infergate_common.registry_api import ModelRecord
from infergate_common.worker_api import Task

from ... import __version__, limits
from ...services import services
from .. import kserve, tabular
from ..edge import parse_body, reachable_models, ready, request_id, resolve_model
from . import binary
from .models import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    TensorMetadata,
)

blueprint = Blueprint("v2", __name__, url_prefix="/v2")

_OUTPUT_TYPES = {
    Task.SEQUENCE_CLASSIFICATION: ("INT64", [-1]),
    Task.TOKEN_CLASSIFICATION: ("INT64", [-1, 1, -1]),
    Task.FILL_MASK: ("BYTES", [-1]),
    Task.TEXT_EMBEDDING: ("FP32", [-1, -1]),
    Task.TEXT_GENERATION: ("BYTES", [-1]),
    Task.TEXT2TEXT_GENERATION: ("BYTES", [-1]),
    Task.TABULAR: ("FP32", [-1]),
}


def render_error(error: InfergateError) -> Response:
    return kserve.render_error(error)


def _json(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


@blueprint.get("")
def server_metadata() -> Response:
    return _json(ServerMetadata(name=services().settings.server_name, version=__version__, extensions=[]))


@blueprint.get("/health/live")
def live() -> Response:
    return _json(Live(live=True))


@blueprint.get("/health/ready")
def server_ready() -> Response:
    """Ready when the registry answers and every model reachable here has a
    ready replica."""
    try:
        ok = all(ready(m) for m in reachable_models())
    except InfergateError:
        ok = False
    return _json(Ready(ready=ok), status=200 if ok else 503)


@blueprint.get("/models/<name>")
@blueprint.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    model = resolve_model(name)
    if model.task == Task.TABULAR:
        return _json(_tabular_metadata(model))
    datatype, shape = _OUTPUT_TYPES[model.task]
    return _json(
        ModelMetadata(
            name=model.name,
            versions=[model.revision] if model.revision else [],
            platform=f"infergate/{model.backend.value}",
            inputs=[TensorMetadata(name="input-0", datatype="BYTES", shape=[-1])],
            outputs=[TensorMetadata(name="output-0", datatype=datatype, shape=shape)],
        )
    )


def _tabular_metadata(model: ModelRecord) -> ModelMetadata:
    """Inputs and outputs from the schema the worker registered."""
    schema = tabular.schema(model)
    features = schema.n_features if schema else -1
    outputs = [TensorMetadata(name="output-0", datatype="FP32", shape=[-1])]
    if schema is not None:
        shape = [-1] if schema.outputs == 1 else [-1, schema.outputs]
        outputs = [TensorMetadata(name="output-0", datatype=schema.output_datatype, shape=shape)]
    return ModelMetadata(
        name=model.name,
        versions=[model.revision] if model.revision else [],
        platform=f"infergate/{model.backend.value}",
        inputs=[TensorMetadata(name="input-0", datatype="FP32", shape=[-1, features])],
        outputs=outputs,
    )


@blueprint.get("/models/<name>/ready")
@blueprint.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    model = resolve_model(name)
    ok = ready(model)
    return _json(ModelReady(name=model.name, ready=ok), status=200 if ok else 503)


def _flatten(values: list[Any]) -> list[Any]:
    """Nested tensor data in row-major order, level by level (no recursion)."""
    flat = values
    while any(isinstance(value, list) for value in flat):
        flat = [item for value in flat for item in (value if isinstance(value, list) else [value])]
    return flat


def _shape(values: Any) -> list[int]:
    shape = []
    while isinstance(values, list):
        shape.append(len(values))
        values = values[0] if values else None
    return shape


def _elements(tensor: InferInput) -> int:
    """The element count the shape declares; a negative dimension is a 400."""
    if any(dim < 0 for dim in tensor.shape):
        raise InvalidRequest(f"input {tensor.name}: shape {tensor.shape} has a negative dimension")
    count = 1
    for dim in tensor.shape:
        count *= dim
    return count


def _check_layout(tensor: InferInput, count: int) -> list[Any]:
    """The data, flat, once it agrees with the shape: flat data of the
    declared size, or nested data whose every level has the declared length."""
    data = tensor.data
    if any(isinstance(item, list) for item in data):
        level: list[Any] = [data]
        for depth, dim in enumerate(tensor.shape):
            if any(not isinstance(node, list) or len(node) != dim for node in level):
                raise InvalidRequest(
                    f"input {tensor.name}: nested data does not have shape {tensor.shape} "
                    f"(dimension {depth} differs)"
                )
            level = [item for node in level for item in node]
        if any(isinstance(node, list) for node in level):
            raise InvalidRequest(f"input {tensor.name}: data nests deeper than shape {tensor.shape}")
        data = level
    if len(data) != count:
        raise InvalidRequest(f"input {tensor.name} has shape {tensor.shape} but {len(data)} elements")
    return data


def _input_texts(body: InferRequest) -> list[str]:
    counts = [_elements(tensor) for tensor in body.inputs]
    limits.check_v2_elements(sum(counts))
    tensor = body.inputs[0]
    if tensor.datatype.upper() != "BYTES":
        raise InvalidRequest(f"input {tensor.name} must have datatype BYTES, not {tensor.datatype}")
    data = _check_layout(tensor, counts[0])
    if not data:
        raise InvalidRequest(f"input {tensor.name} is empty")
    if not all(isinstance(item, str) for item in data):
        raise InvalidRequest(f"input {tensor.name}: BYTES elements must be strings")
    return data


def _infer_tabular(model: ModelRecord, body: InferRequest) -> InferResponse:
    if len(body.inputs) != 1:
        raise InvalidRequest(
            f"a tabular model takes one input tensor of shape [rows, features], got {len(body.inputs)}"
        )
    tensor = body.inputs[0]
    params = kserve.parameters(body.parameters).merged(
        kserve.parameters(tensor.parameters, "inputs.0.parameters")
    )
    shape, data = tabular.v2_rows(tensor.name, tensor.datatype, tensor.shape, tensor.data)
    rid = request_id()
    result = tabular.predict(model, rid, shape, data, params.predict_proba, params.raw_margin)
    output = InferOutput(
        name="output-0", shape=result.shape, datatype=result.datatype, data=_flatten(result.predictions)
    )
    return InferResponse(model_name=model.name, id=body.id or rid, outputs=[output])


def _infer(model: ModelRecord, body: InferRequest) -> InferResponse:
    if model.task == Task.TABULAR:
        return _infer_tabular(model, body)
    texts = _input_texts(body)
    params = kserve.parameters(body.parameters).merged(
        kserve.parameters(body.inputs[0].parameters, "inputs.0.parameters")
    )
    rid = request_id()
    if model.task.generative:
        items = [kserve.Prompt(prompt=text) for text in texts]
        requests = kserve.generate_requests(model, rid, items, params, stream=False)
        responses = kserve.generate_all(model, requests)
        generated = [choice.text for response in responses for choice in response.choices]
        shape = (
            [len(responses)]
            if len(generated) == len(responses)
            else [len(responses), len(generated) // len(responses)]
        )
        outputs = [InferOutput(name="output-0", shape=shape, datatype="BYTES", data=generated)]
    else:
        encoded = kserve.encode(model, rid, texts, params)
        outputs = [
            InferOutput(
                name="output-0",
                shape=encoded.shape,
                datatype=encoded.datatype,
                data=_flatten(encoded.predictions),
            )
        ]
        if encoded.offsets_mapping is not None:
            outputs.append(
                InferOutput(
                    name="offsets_mapping",
                    shape=_shape(encoded.offsets_mapping),
                    datatype="INT64",
                    data=_flatten(encoded.offsets_mapping),
                )
            )
    return InferResponse(model_name=model.name, id=body.id or rid, outputs=outputs)


@blueprint.post("/models/<name>/infer")
@blueprint.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    body = binary.parse_binary_request() if binary.has_binary_data() else parse_body(InferRequest)
    model = resolve_model(name)
    return _json(_infer(model, body))
