"""KServe v2's binary tensor data extension, for numeric inputs.

A request with the ``Inference-Header-Content-Length: N`` header carries its
JSON in the first N bytes of the body; the raw little-endian values of each
input whose ``parameters.binary_data_size`` is set follow, in input order
(what ``numpy.ndarray.tobytes()`` gives). The values are read into the
input's ``data`` here, so everything after sees an ordinary request.
Answers stay JSON. BYTES tensors in binary form are refused."""

from __future__ import annotations

import json
import sys
from array import array
from typing import Any

from infergate_common.errors import InvalidRequest

from ...request_scope import current
from ..edge import validate
from .models import InferRequest

HEADER = "Inference-Header-Content-Length"

# v2 datatype -> (array typecode, bytes per value)
_TYPECODES = {
    "BOOL": ("B", 1),
    "UINT8": ("B", 1),
    "UINT16": ("H", 2),
    "UINT32": ("I", 4),
    "UINT64": ("Q", 8),
    "INT8": ("b", 1),
    "INT16": ("h", 2),
    "INT32": ("i", 4),
    "INT64": ("q", 8),
    "FP32": ("f", 4),
    "FP64": ("d", 8),
}


def has_binary_data() -> bool:
    return current().header(HEADER) is not None


def _values(name: str, datatype: str, chunk: bytes) -> list[Any]:
    kind = datatype.upper()
    if kind not in _TYPECODES:
        raise InvalidRequest(
            f"input {name}: binary data of datatype {datatype} is not supported "
            f"(numeric datatypes are: {', '.join(_TYPECODES)})"
        )
    typecode, size = _TYPECODES[kind]
    if len(chunk) % size:
        raise InvalidRequest(f"input {name}: {len(chunk)} bytes is not a whole number of {kind} values")
    values = array(typecode)
    values.frombytes(chunk)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def parse_binary_request() -> InferRequest:
    """The request with each binary input's values in its ``data``."""
    scope = current()
    raw = scope.body()
    header = scope.header(HEADER) or ""
    try:
        length = int(header)
    except ValueError:
        raise InvalidRequest(f"{HEADER} must be a number of bytes, not {header!r}") from None
    if not 0 < length <= len(raw):
        raise InvalidRequest(f"{HEADER} is {length}, but the body has {len(raw)} bytes")
    try:
        body = json.loads(raw[:length])
    except ValueError as exc:
        raise InvalidRequest(f"the JSON part of the request is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidRequest("the JSON part of the request must be an object with 'inputs'")
    offset = length
    for index, tensor in enumerate(body["inputs"]):
        if not isinstance(tensor, dict):
            continue
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(raw):
            raise InvalidRequest(
                f"inputs.{index}.parameters.binary_data_size is {size!r}, but {len(raw) - offset} "
                "bytes of binary data are left"
            )
        name = str(tensor.get("name", index))
        tensor["data"] = _values(name, str(tensor.get("datatype", "")), raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise InvalidRequest(f"{len(raw) - offset} bytes of binary data follow the last binary input")
    return validate(InferRequest, body)
