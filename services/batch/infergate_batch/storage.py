"""Where the bytes of files live, behind one small interface.

* :class:`LocalStorage`: a folder (a PVC in the chart, shared by the router
  and the batch workers). Writes go to a temporary name and are renamed into
  place, so a reader never sees half a file.
* :class:`FsspecStorage`: any fsspec URL, ``s3://bucket/prefix`` with s3fs
  (S3, MinIO, Ceph, ...). Object stores publish an object when its upload
  completes, which gives the same guarantee.

:func:`open_storage` picks one from the settings' URL: a plain path or
``file://`` is local, any other scheme goes through fsspec.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec

from infergate_common.errors import StartupError

from .settings import BatchSettings


class FileStorage(ABC):
    """Named blobs: written once, read whole or by byte range, deleted."""

    @abstractmethod
    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """A binary stream; the blob appears under ``key`` only when the
        block ends without an error."""

    @abstractmethod
    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[IO[bytes]]: ...

    @abstractmethod
    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it is already gone."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def lines(self, key: str) -> Iterator[tuple[int, bytes]]:
        """``(byte offset, line)`` for each line, newline included."""
        offset = 0
        with self.reader(key) as stream:
            for line in stream:
                yield offset, line
                offset += len(line)


class LocalStorage(FileStorage):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key outside the storage folder: {key}")
        return path

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[IO[bytes]]:
        with open(self._path(key), "rb") as stream:
            yield stream

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with open(self._path(key), "rb") as stream:
            stream.seek(start)
            return stream.read(end - start)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


class FsspecStorage(FileStorage):
    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        if ".." in key.split("/"):
            raise ValueError(f"storage key outside the storage prefix: {key}")
        return f"{self.root}/{key}"

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        path = self._path(key)
        parent = path.rsplit("/", 1)[0]
        with contextlib.suppress(FileExistsError):
            self.fs.makedirs(parent, exist_ok=True)
        partial = f"{parent}/.{uuid.uuid4().hex}.partial"
        try:
            with self.fs.open(partial, "wb") as stream:
                yield stream
            self.fs.mv(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                if self.fs.exists(partial):
                    self.fs.rm(partial)

    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[IO[bytes]]:
        with self.fs.open(self._path(key), "rb") as stream:
            yield stream

    def read_range(self, key: str, start: int, end: int) -> bytes:
        return bytes(self.fs.cat_file(self._path(key), start=start, end=end))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(key))

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))


def open_storage(settings: BatchSettings) -> FileStorage:
    url = settings.batch_storage_url
    try:
        options = json.loads(settings.batch_storage_options or "{}")
    except ValueError as exc:
        raise StartupError(f"INFERGATE_BATCH_STORAGE_OPTIONS is not JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise StartupError("INFERGATE_BATCH_STORAGE_OPTIONS must be a JSON object")
    if "://" not in url:
        return LocalStorage(Path(url))
    if url.startswith("file://"):
        return LocalStorage(Path(url.removeprefix("file://")))
    return FsspecStorage(url, options)
