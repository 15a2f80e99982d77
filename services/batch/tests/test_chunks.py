"""Cutting an input file into chunks by byte range."""

from __future__ import annotations

from pathlib import Path

from infergate_batch.runs import chunks_of
from infergate_batch.storage import LocalStorage


def test_chunks_cover_every_line_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    lines = [f'{{"n": {i}}}\n'.encode() for i in range(23)]
    with storage.writer("in.jsonl") as out:
        out.write(b"".join(lines))
    chunks = list(chunks_of(storage, "in.jsonl", 10))
    assert [(c.index, c.first_line, c.count) for c in chunks] == [(0, 1, 10), (1, 11, 10), (2, 21, 3)]
    seen = b"".join(storage.read_range("in.jsonl", c.start, c.end) for c in chunks)
    assert seen == b"".join(lines)
    assert storage.read_range("in.jsonl", chunks[1].start, chunks[1].end).splitlines()[0] == b'{"n": 10}'
