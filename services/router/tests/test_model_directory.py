"""The router's model directory against the real registry: a model
registered after the list was cached (its change message missed, as when
the router's change channel is down during a Redis restart) is found on
first use, and unknown names cost the registry at most one fetch per
interval."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from router_processes import Stack

from infergate_common.errors import ModelNotFound
from infergate_router import model_directory
from infergate_router.model_directory import ModelDirectory


@pytest.fixture
def directory(stack: Stack) -> Iterator[ModelDirectory]:
    # A TTL far beyond the test: only a miss can make it ask the registry again.
    own = ModelDirectory(stack.registry_url, ttl_s=3600, connect_timeout_s=2)
    yield own
    own.close()


def test_a_model_registered_after_the_list_was_cached_is_found(
    stack: Stack, directory: ModelDirectory
) -> None:
    assert "late" not in {m.name for m in directory.models()}
    # Past the miss interval since the list was fetched: the next miss refetches.
    time.sleep(model_directory.MISS_REFETCH_INTERVAL_S)
    process, url = stack.start_null_worker("late")
    try:
        record = directory.resolve(None, "late")
        assert record.name == "late"
        assert [r.url for r in record.replicas] == [url]
    finally:
        process.stop()


def test_requests_that_miss_together_all_find_a_model_registered_late(
    stack: Stack, directory: ModelDirectory
) -> None:
    """The first miss refetches; the misses that waited for its fetch look
    again in the list it stored (they used to answer 404)."""
    assert "late-together" not in {m.name for m in directory.models()}
    time.sleep(model_directory.MISS_REFETCH_INTERVAL_S)
    process, _ = stack.start_null_worker("late-together")
    callers = 16
    start = threading.Barrier(callers)

    def resolve(_: int) -> str:
        start.wait()
        try:
            return directory.resolve(None, "late-together").name
        except ModelNotFound:
            return "not found"

    try:
        with ThreadPoolExecutor(callers) as pool:
            names = list(pool.map(resolve, range(callers)))
    finally:
        process.stop()
    assert names == ["late-together"] * callers


def test_unknown_names_refetch_at_most_once_per_interval(directory: ModelDirectory) -> None:
    directory.models()
    time.sleep(model_directory.MISS_REFETCH_INTERVAL_S)
    with pytest.raises(ModelNotFound):
        directory.resolve(None, "nobody-1")
    refetched_at = directory._fetched_at
    for i in range(50):
        with pytest.raises(ModelNotFound):
            directory.resolve(None, f"nobody-{i}")
    assert directory._fetched_at == refetched_at
