"""Both storage backends behind the one interface: a local folder, and
object storage through fsspec against a real local S3 server (moto)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from harness.ports import free_port  # tests/harness, on the path by services/conftest.py
from moto.server import ThreadedMotoServer

from infergate_batch.settings import BatchSettings
from infergate_batch.storage import FileStorage, FsspecStorage, LocalStorage, open_storage


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    ).create_bucket(Bucket="batch")
    yield endpoint
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> FileStorage:
    if request.param == "local":
        return open_storage(BatchSettings(batch_storage_url=str(tmp_path / "files")))
    endpoint = request.getfixturevalue("s3_endpoint")
    options = (
        f'{{"key": "k", "secret": "s", "client_kwargs": {{"endpoint_url": "{endpoint}", '
        f'"region_name": "us-east-1"}}}}'
    )
    return open_storage(
        BatchSettings(batch_storage_url=f"s3://batch/{tmp_path.name}", batch_storage_options=options)
    )


def test_open_storage_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_storage(BatchSettings(batch_storage_url=str(tmp_path))), LocalStorage)
    assert isinstance(open_storage(BatchSettings(batch_storage_url=f"file://{tmp_path}")), LocalStorage)
    assert isinstance(open_storage(BatchSettings(batch_storage_url="memory://x")), FsspecStorage)


def test_write_read_range_lines_delete(storage: FileStorage) -> None:
    content = b'{"a": 1}\n{"b": 22}\n{"c": 333}\n'
    with storage.writer("files/f.jsonl") as out:
        out.write(content[:10])
        out.write(content[10:])
    assert storage.exists("files/f.jsonl")
    with storage.reader("files/f.jsonl") as stream:
        assert stream.read() == content
    assert storage.read_range("files/f.jsonl", 9, 19) == b'{"b": 22}\n'
    assert list(storage.lines("files/f.jsonl")) == [
        (0, b'{"a": 1}\n'),
        (9, b'{"b": 22}\n'),
        (19, b'{"c": 333}\n'),
    ]
    storage.delete("files/f.jsonl")
    storage.delete("files/f.jsonl")
    assert not storage.exists("files/f.jsonl")


def test_a_failed_write_leaves_nothing(storage: FileStorage) -> None:
    with contextlib.suppress(RuntimeError), storage.writer("files/broken.jsonl") as out:
        out.write(b"half a file")
        raise RuntimeError("upload interrupted")
    assert not storage.exists("files/broken.jsonl")


def test_a_rewrite_replaces_the_whole_file(storage: FileStorage) -> None:
    for content in (b"first version, longer\n", b"second\n"):
        with storage.writer("files/out.jsonl") as out:
            out.write(content)
    with storage.reader("files/out.jsonl") as stream:
        assert stream.read() == b"second\n"


def test_keys_stay_inside_the_storage(storage: FileStorage) -> None:
    with pytest.raises(ValueError), storage.writer("../escape.jsonl"):
        pass
