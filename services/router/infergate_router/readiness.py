"""Whether this router process can serve: it is not draining, and Redis and
the registry answer. Checked at most once per ``CHECK_INTERVAL_S`` so a
probe never costs more than a cached answer."""

from __future__ import annotations

import threading
import time

from infergate_common.errors import InfergateError

from .model_directory import ModelDirectory
from .stream_reader import StreamReader

CHECK_INTERVAL_S = 1.0


class Readiness:
    def __init__(self, reader: StreamReader, directory: ModelDirectory) -> None:
        self.reader = reader
        self.directory = directory
        self.draining = threading.Event()
        self._checked_at = float("-inf")
        self._last: tuple[bool, str] = (False, "not checked")
        self._lock = threading.Lock()

    def check(self) -> tuple[bool, str]:
        if self.draining.is_set():
            return False, "shutting down"
        with self._lock:
            if time.monotonic() - self._checked_at >= CHECK_INTERVAL_S:
                self._last = self._probe()
                self._checked_at = time.monotonic()
            return self._last

    def _probe(self) -> tuple[bool, str]:
        try:
            self.reader.exists("readiness-probe")
        except InfergateError:
            return False, "Redis unreachable"
        try:
            self.directory.models()
        except InfergateError:
            return False, "model registry unreachable"
        return True, ""
