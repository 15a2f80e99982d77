"""The router's reading of tabular rows (infergate_router.protocols.tabular),
without a stack: the fast path for plain numbers and the value-by-value path
agree, and every bad value is named."""

from __future__ import annotations

import math
from typing import Any

import pytest

from infergate_common.errors import InvalidRequest
from infergate_router.protocols.tabular import v1_rows, v2_rows


def test_plain_rows_pass_unchanged() -> None:
    rows = [[0.5, 1, -2.25], [3, 4.0, 1e300]]
    assert v1_rows(rows, "instances") == ([2, 3], [0.5, 1, -2.25, 3, 4.0, 1e300])
    # Finite values whose sum overflows take the slow path and still pass.
    assert v1_rows([[1e308, 1e308]], "instances") == ([1, 2], [1e308, 1e308])


def test_missing_values_become_null() -> None:
    assert v1_rows([[1.0, math.nan, None]], "instances") == ([1, 3], [1.0, None, None])
    assert v2_rows("x", "FP32", [1, 2], [math.nan, 2.0]) == ([1, 2], [None, 2.0])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1.0, True], "'instances.0.1': expected a number or null, got True"),
        ([1.0, "2"], "'instances.0.1': expected a number or null, got '2'"),
        ([math.inf, 1.0], "'instances.0.0': inf is not a finite number"),
        ([1.0, -math.inf], "'instances.0.1': -inf is not a finite number"),
        ([1.0, [2.0]], "'instances.0.1': expected a number or null, got [2.0]"),
    ],
)
def test_bad_values_are_named(row: list[Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        v1_rows([[0.0, 0.0], row], "instances")
    assert info.value.message == message.replace("instances.0", "instances.1")


def test_integer_tensors() -> None:
    assert v2_rows("x", "INT64", [1, 3], [[1, 2, 3]]) == ([1, 3], [1, 2, 3])
    assert v2_rows("x", "INT32", [1, 2], [1, 2.0]) == ([1, 2], [1, 2.0])
    with pytest.raises(InvalidRequest, match=r"'inputs.x.data\[0\]\[1\]': NaN in an integer tensor"):
        v2_rows("x", "INT64", [1, 2], [1, math.nan])
    with pytest.raises(InvalidRequest, match=r"'inputs.x.data\[0\]\[0\]': expected an integer, got None"):
        v2_rows("x", "INT64", [1, 2], [None, 1])
