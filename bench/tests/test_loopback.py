from __future__ import annotations

import pytest

from bench.client import Call
from bench.loopback import NotLoopback, require_loopback


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/x", "http://localhost:1/", "http://[::1]:80/", "redis://127.0.0.1:6379/0"]
)
def test_loopback_targets_are_accepted(url: str) -> None:
    assert require_loopback(url) == url


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/", "http://8.8.8.8:80/", "ftp://127.0.0.1/", "http:///nohost"]
)
def test_other_targets_are_refused(url: str) -> None:
    with pytest.raises(NotLoopback):
        require_loopback(url)


def test_a_call_to_a_remote_host_cannot_be_built() -> None:
    with pytest.raises(NotLoopback):
        Call("remote", "http://192.0.2.1/openai/v1/completions", lambda i: {})
