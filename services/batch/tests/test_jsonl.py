"""Upload validation: the first bad line is named, the limits are enforced."""

from __future__ import annotations

import io
import json

import pytest

from infergate_batch.jsonl import copy_validated
from infergate_common.errors import InvalidRequest


def line(custom_id: str, **changes: object) -> bytes:
    value = {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}
    value.update(changes)
    return (json.dumps(value) + "\n").encode()


def check(lines: list[bytes], max_bytes: int = 10_000, max_lines: int = 100) -> tuple[int, int, bytes]:
    out = io.BytesIO()
    size, count = copy_validated(io.BytesIO(b"".join(lines)), out, max_bytes, max_lines)
    return size, count, out.getvalue()


def test_a_valid_file_is_copied_as_it_is() -> None:
    lines = [line("a"), line("b", url="/v1/chat/completions"), line("c", url="/v1/completions")]
    size, count, copied = check(lines)
    assert (size, count, copied) == (len(b"".join(lines)), 3, b"".join(lines))


def test_a_missing_last_newline_is_added() -> None:
    size, count, copied = check([line("a"), line("b").rstrip(b"\n")])
    assert copied.endswith(b"}\n") and count == 2 and size == len(copied)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([line("a"), b"{oops\n"], "line 2 is not valid JSON"),
        ([line("a"), b'"text"\n'], "line 2 must be a JSON object"),
        ([line("a"), line("")], "line 2: 'custom_id'"),
        ([line("a"), line("b", method="PUT")], "line 2: 'method'"),
        ([line("a"), line("b", url="/v1/moderations")], "line 2: url '/v1/moderations' is not supported"),
        ([line("a"), line("b", body=[1])], "line 2: 'body'"),
        ([line("a"), line("b"), line("a")], "line 3: custom_id 'a' is already used on line 1"),
        ([line("a"), b"\xff\xfe\n"], "line 2 is not UTF-8"),
        ([line("a"), b"   \n"], "line 2 is empty"),
        ([], "the file is empty"),
    ],
)
def test_the_first_bad_line_is_named(lines: list[bytes], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check(lines)
    assert message in caught.value.message
    assert caught.value.status == 400 and caught.value.param == "file"


def test_limits() -> None:
    with pytest.raises(InvalidRequest, match="more than 2 lines"):
        check([line("a"), line("b"), line("c")], max_lines=2)
    with pytest.raises(InvalidRequest, match="size limit of 150 bytes"):
        check([line("a"), line("b")], max_bytes=150)
