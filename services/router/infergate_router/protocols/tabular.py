"""Tabular models (task ``tabular``) on KServe v1 and v2: numeric rows in,
one prediction per row out, through the worker's ``/predict``.

Both protocols end in the same internal request: ``shape`` ``[rows,
features]`` and the values row-major, null for a missing value (JSON
``null`` or ``NaN``). What the protocol can check is checked here (numbers,
equal rows, datatype, shape against data); the worker checks the rows
against its model (feature count, missing values)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from infergate_common.errors import InvalidRequest
from infergate_common.registry_api import ModelRecord
from infergate_common.worker_api import TabularPredictRequest, TabularPredictResponse, TabularSchema

from ..services import services

# v2 datatypes a row may come in; the INT types take integers only.
NUMERIC_DATATYPES = ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32")
_FLOAT_TYPES = ("FP16", "FP32", "FP64")


def _number(value: Any, where: str, integer: bool) -> float | None:
    kind = type(value)
    if kind is float:
        if math.isnan(value):
            if integer:
                raise InvalidRequest(f"'{where}': NaN in an integer tensor", param=where)
            return None
        if math.isinf(value):
            raise InvalidRequest(f"'{where}': {value} is not a finite number", param=where)
        if integer and not value.is_integer():
            raise InvalidRequest(f"'{where}': {value} is not an integer", param=where)
        return value
    if kind is int:
        return value  # type: ignore[no-any-return]
    if value is None and not integer:
        return None
    shown = repr(value) if len(repr(value)) <= 40 else f"a {kind.__name__}"
    expected = "an integer" if integer else "a number or null"
    raise InvalidRequest(f"'{where}': expected {expected}, got {shown}", param=where)


_PLAIN_NUMBERS = {float, int}


def _plain(values: list[Any]) -> bool:
    """Whether every value is a finite int or float (no bool, None or NaN):
    two loops in C, so a large request costs little; anything else takes
    the value-by-value path, which names the first bad value."""
    if not set(map(type, values)) <= _PLAIN_NUMBERS:
        return False
    try:
        return math.isfinite(math.fsum(values))
    except OverflowError:
        return False


def _numbers(values: list[Any], where: Callable[[int], str], integer: bool) -> list[float | None]:
    if _plain(values) and (not integer or float not in set(map(type, values))):
        return values
    return [_number(value, where(i), integer) for i, value in enumerate(values)]


def v1_rows(instances: list[Any], where: str) -> tuple[list[int], list[float | None]]:
    """``{"instances": [[x, ...], ...]}``: each instance one row, all of one length."""
    data: list[float | None] = []
    width: int | None = None
    for index, row in enumerate(instances):
        if not isinstance(row, list):
            raise InvalidRequest(
                f"'{where}.{index}': expected a row (a list of numbers) per instance, "
                f"got {type(row).__name__}",
                param=f"{where}.{index}",
            )
        if width is None:
            width = len(row)
            if not width:
                raise InvalidRequest(f"'{where}.0': an empty row", param=f"{where}.0")
        elif len(row) != width:
            raise InvalidRequest(
                f"'{where}.{index}': {len(row)} values, but {where}.0 has {width}: every row needs "
                "the same number of features",
                param=f"{where}.{index}",
            )
        prefix = f"{where}.{index}"
        data.extend(_numbers(row, lambda column: f"{prefix}.{column}", integer=False))  # noqa: B023
    return [len(instances), width or 0], data


def _flatten(values: list[Any], out: list[Any]) -> None:
    for value in values:
        if isinstance(value, list):
            _flatten(value, out)
        else:
            out.append(value)


def v2_rows(
    name: str, datatype: str, shape: list[int], values: list[Any]
) -> tuple[list[int], list[float | None]]:
    """One v2 input tensor of shape ``[rows, features]``, data flat or nested."""
    where = f"inputs.{name}"
    kind = datatype.upper()
    if kind not in NUMERIC_DATATYPES:
        raise InvalidRequest(
            f"input {name} has datatype {datatype}: a tabular model takes a numeric tensor "
            f"({', '.join(NUMERIC_DATATYPES)})",
            param=f"{where}.datatype",
        )
    if len(shape) != 2 or any(not isinstance(dim, int) or dim < 1 for dim in shape):
        raise InvalidRequest(
            f"input {name} has shape {shape}: expected [rows, features] with both at least 1",
            param=f"{where}.shape",
        )
    flat: list[Any] = []
    _flatten(values, flat)
    if len(flat) != shape[0] * shape[1]:
        raise InvalidRequest(
            f"input {name} has shape {shape}, which holds {shape[0] * shape[1]} values, "
            f"but its data has {len(flat)}",
            param=f"{where}.data",
        )
    integer = kind not in _FLOAT_TYPES
    columns = shape[1]
    data = _numbers(flat, lambda i: f"{where}.data[{i // columns}][{i % columns}]", integer)
    return list(shape), data


def predict(
    model: ModelRecord,
    request_id: str,
    shape: list[int],
    data: list[float | None],
    predict_proba: bool | None,
    raw_margin: bool | None,
) -> TabularPredictResponse:
    svc = services()
    req = TabularPredictRequest.model_construct(
        request_id=request_id, shape=shape, data=data, predict_proba=predict_proba, raw_margin=raw_margin
    )
    return svc.dispatcher.call(model, lambda url: svc.workers.predict(url, req))


def schema(model: ModelRecord) -> TabularSchema | None:
    """The schema a replica of the model registered, ready ones first."""
    for replica in sorted(model.replicas, key=lambda r: not r.ready):
        if replica.info is not None and replica.info.tabular is not None:
            return replica.info.tabular
    return None
