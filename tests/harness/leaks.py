"""A watch over every HTTP response body the tests read from a public
endpoint (the router): none may contain an internal address (the
registry's, a worker's, Redis's) or a secret (an API key of another
client, the internal token, the Redis password).

It hooks the two ways the tests read bodies: ``requests``'
``Response.iter_content`` (``.content``, ``.json()``, ``iter_lines``) and
``httpx``'s ``Response.iter_bytes`` / ``aiter_bytes`` (the ``openai`` SDK
and LangChain, streamed or not). Each body is matched once it has been
read (or once the reader stops early). Stacks register what is public and what is
internal (:meth:`LeakWatch.public`, :meth:`LeakWatch.internal`); the
``no_internal_addresses`` fixture of ``tests/conftest.py`` fails a test
whose responses leaked anything.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import requests


@dataclass
class Leak:
    url: str
    found: str
    excerpt: str


@dataclass
class LeakWatch:
    public_netlocs: set[str] = field(default_factory=set)
    forbidden: set[str] = field(default_factory=set)
    leaks: list[Leak] = field(default_factory=list)
    checked: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def public(self, url: str) -> None:
        """Responses from ``url``'s host and port are checked."""
        self.public_netlocs.add(urlsplit(url).netloc)

    def internal(self, *texts: str) -> None:
        """Strings no checked response may contain (addresses, secrets)."""
        self.forbidden.update(text for text in texts if text)

    def forget(self, *texts: str) -> None:
        self.forbidden.difference_update(texts)

    def watched(self, url: str) -> bool:
        return urlsplit(str(url)).netloc in self.public_netlocs

    def scan(self, url: str) -> _Scanner:
        return _Scanner(self, str(url))

    def take(self) -> list[Leak]:
        with self._lock:
            leaks, self.leaks = self.leaks, []
        return leaks


class _Scanner:
    """Gathers one body as it is read and matches it once it ends (or the
    reader stops early). An address matches only where no digit follows, so
    port 4123 is not found inside port 41234."""

    def __init__(self, watch: LeakWatch, url: str) -> None:
        self.watch = watch
        self.url = url
        self.body = bytearray()
        self.done = False

    def feed(self, chunk: bytes) -> None:
        self.body += chunk

    def close(self) -> None:
        if self.done:
            return
        self.done = True
        text = self.body.decode("utf-8", errors="replace")
        found = []
        for secret in list(self.watch.forbidden):
            match = re.search(re.escape(secret) + r"(?!\d)", text)
            if match is not None:
                found.append(Leak(self.url, secret, text[max(0, match.start() - 80) : match.end() + 80]))
        with self.watch._lock:
            self.watch.leaks.extend(found)
            self.watch.checked += 1


WATCH = LeakWatch()
_installed = False


def install() -> LeakWatch:
    """Hook the HTTP clients once per process; returns the watch."""
    global _installed
    if _installed:
        return WATCH
    _installed = True

    original_iter_content = requests.models.Response.iter_content

    def iter_content(self: requests.Response, *args: Any, **kwargs: Any) -> Iterator[Any]:
        chunks = original_iter_content(self, *args, **kwargs)
        if not WATCH.watched(self.url):
            yield from chunks
            return
        scanner = WATCH.scan(self.url)
        try:
            for chunk in chunks:
                scanner.feed(chunk.encode() if isinstance(chunk, str) else chunk)
                yield chunk
        finally:
            scanner.close()

    requests.models.Response.iter_content = iter_content  # type: ignore[method-assign]

    original_iter_bytes = httpx.Response.iter_bytes
    original_aiter_bytes = httpx.Response.aiter_bytes

    def iter_bytes(self: httpx.Response, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        chunks = original_iter_bytes(self, *args, **kwargs)
        if not WATCH.watched(str(self.request.url)):
            yield from chunks
            return
        scanner = WATCH.scan(str(self.request.url))
        try:
            for chunk in chunks:
                scanner.feed(chunk)
                yield chunk
        finally:
            scanner.close()

    async def aiter_bytes(self: httpx.Response, *args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        watched = WATCH.watched(str(self.request.url))
        scanner = WATCH.scan(str(self.request.url)) if watched else None
        try:
            async for chunk in original_aiter_bytes(self, *args, **kwargs):
                if scanner is not None:
                    scanner.feed(chunk)
                yield chunk
        finally:
            if scanner is not None:
                scanner.close()

    httpx.Response.iter_bytes = iter_bytes  # type: ignore[method-assign]
    httpx.Response.aiter_bytes = aiter_bytes  # type: ignore[method-assign]
    return WATCH
