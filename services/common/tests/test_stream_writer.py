"""The shared stream writer against a real redis-server: numbering, expiry
from the first entry, bounded retries, giving up (the generation is
stopped, an error entry is owed and written once Redis takes it), in both
flavours."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from prometheus_client import REGISTRY

from infergate_common.stream_writer import (
    AsyncStreamOutbox,
    StreamOutbox,
    WriteRetry,
    async_stream_client,
    stream_client,
)
from infergate_common.streams import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    HeartbeatEvent,
    StreamEvent,
    decode_event,
    stream_key,
)
from infergate_common.worker_api import Usage

USAGE = Usage(prompt_tokens=1, completion_tokens=3, total_tokens=4)


def entries(client: redis.Redis, key: str) -> list[StreamEvent]:
    return [decode_event(fields) for _, fields in client.xrange(key)]  # type: ignore[union-attr]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


async def owed_written(outbox: AsyncStreamOutbox, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while outbox.owed_count():
        assert time.monotonic() < deadline, "the owed error was never written"
        await asyncio.sleep(0.02)


@contextmanager
def redis_full(client: redis.Redis) -> Iterator[None]:
    """Redis refuses every write (maxmemory below what it uses, noeviction)."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        yield
    finally:
        client.config_set("maxmemory", "0")


def test_deltas_are_numbered_the_key_expires_from_the_first_entry(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    outbox = StreamOutbox(stream_client(redis_url), "sw1", ttl_s=60, heartbeat_interval_s=None)
    try:
        stream = outbox.open("r1")
        key = stream_key("sw1", "r1")
        stream.delta(0, "a", 1)
        stream.delta(1, "b", 1)
        outbox.flush()
        wait_for(lambda: client.xlen(key) == 2, what="the first step")
        # A worker killed now leaves nothing behind forever.
        assert 0 < client.ttl(key) <= 60  # type: ignore[operator]
        stream.delta(0, "c", 1, finish_reason="stop")
        stream.done({0: "stop", 1: "stop"}, USAGE)
        stream.delta(0, "late", 1)
        stream.error("late")
        outbox.flush()
        wait_for(lambda: client.xlen(key) == 4, what="the done entry")
        written = entries(client, key)
        assert [e.seq for e in written if isinstance(e, DeltaEvent)] == [0, 1, 2]
        assert [e.text for e in written if isinstance(e, DeltaEvent)] == ["a", "b", "c"]
        assert isinstance(written[-1], DoneEvent) and written[-1].deltas == 3
        assert outbox.open_count() == 0
    finally:
        outbox.close()


def test_silent_streams_get_heartbeats(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    outbox = StreamOutbox(stream_client(redis_url), "sw2", heartbeat_interval_s=0.2)
    try:
        stream = outbox.open("r1")
        key = stream_key("sw2", "r1")
        wait_for(lambda: client.xlen(key) >= 2, what="heartbeats")
        assert all(isinstance(e, HeartbeatEvent) for e in entries(client, key))
        assert client.ttl(key) > 0  # type: ignore[operator]
        stream.done({0: "stop"}, USAGE)
        outbox.flush()
        wait_for(lambda: isinstance(entries(client, key)[-1], DoneEvent), what="the done entry")
        count = client.xlen(key)
        time.sleep(0.3)
        assert client.xlen(key) == count, "heartbeats after the end"
    finally:
        outbox.close()


def test_a_refused_batch_is_retried_and_lands_once(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    retry = WriteRetry(attempts=20, first_delay_s=0.05, max_delay_s=0.1)
    failed: list[str] = []
    outbox = StreamOutbox(
        stream_client(redis_url), "sw3", retry=retry, on_failure=failed.append, heartbeat_interval_s=None
    )
    key = stream_key("sw3", "r1")
    try:
        stream = outbox.open("r1")
        with redis_full(admin):
            for i in range(5):
                stream.delta(0, f"t{i}", 1)
            outbox.flush()
            time.sleep(0.3)
            assert admin.exists(key) == 0
        stream.done({0: "stop"}, USAGE)
        outbox.flush()
        wait_for(lambda: admin.exists(key) and isinstance(entries(admin, key)[-1], DoneEvent), what="done")
        written = entries(admin, key)
        assert [e.seq for e in written if isinstance(e, DeltaEvent)] == [0, 1, 2, 3, 4]
        assert failed == []
    finally:
        outbox.close()


def test_giving_up_stops_the_generation_and_the_error_is_written_later(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    failed: list[str] = []
    outbox = StreamOutbox(
        stream_client(redis_url),
        "sw4",
        retry=WriteRetry(attempts=3, first_delay_s=0.01),
        on_failure=failed.append,
        heartbeat_interval_s=None,
    )
    key = stream_key("sw4", "r1")
    try:
        stream = outbox.open("r1")
        other = outbox.open("r2")
        stream.delta(0, "kept", 1)
        outbox.flush()
        wait_for(lambda: admin.xlen(key) == 1, what="the first delta")
        with redis_full(admin):
            stream.delta(0, "lost", 1)
            outbox.flush()
            wait_for(lambda: failed == ["r1"], what="the give-up")
            assert stream.failed and not other.failed
            # Nothing more of a failed stream is written, not even its end.
            stream.delta(0, "after", 1)
            stream.done({0: "stop"}, USAGE)
            outbox.flush()
            assert outbox.owed_count() == 1
        wait_for(lambda: outbox.owed_count() == 0, what="the owed error entry")
        written = entries(admin, key)
        assert len(written) == 1 and isinstance(written[0], ErrorEvent)
        assert written[0].status == 503 and "Redis is full" in written[0].message
        assert admin.ttl(key) > 0  # type: ignore[operator]
        # The other stream is unaffected.
        other.delta(0, "x", 1)
        other.done({0: "stop"}, USAGE)
        outbox.flush()
        other_key = stream_key("sw4", "r2")
        wait_for(lambda: admin.exists(other_key) and admin.xlen(other_key) == 2, what="the other stream")
    finally:
        outbox.close()


def test_async_flavour_numbers_retries_and_gives_up(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    failed: list[str] = []

    async def scenario() -> None:
        outbox = AsyncStreamOutbox(
            async_stream_client(redis_url),
            "sw5",
            retry=WriteRetry(attempts=3, first_delay_s=0.01),
            on_failure=failed.append,
            heartbeat_interval_s=0.2,
        )
        outbox.start()
        try:
            good, bad = outbox.open("good"), outbox.open("bad")
            for i in range(3):
                good.delta(0, f"g{i}", 1)
            good.done({0: "stop"}, USAGE)
            await outbox.drain()
            with redis_full(admin):
                bad.delta(0, "lost", 1)
                await outbox.drain()
                assert failed == ["bad"] and bad.failed
            await owed_written(outbox)
        finally:
            await outbox.close()

    asyncio.run(scenario())
    good = entries(admin, stream_key("sw5", "good"))
    assert [e.seq for e in good if isinstance(e, DeltaEvent)] == [0, 1, 2]
    assert isinstance(good[-1], DoneEvent) and good[-1].deltas == 3
    bad = entries(admin, stream_key("sw5", "bad"))
    assert len(bad) == 1 and isinstance(bad[0], ErrorEvent) and "Redis is full" in bad[0].message


def test_a_paused_redis_fails_the_stream_within_the_budget(redis_url: str) -> None:
    """Writes that hang (``CLIENT PAUSE``) time out and count as failures: the
    writer gives up within its retry budget after the first failure, not one
    timeout per retry."""
    admin = redis.Redis.from_url(redis_url)
    failed: list[str] = []
    outbox = StreamOutbox(
        stream_client(redis_url, timeout_s=0.3), "sw6", on_failure=failed.append, heartbeat_interval_s=None
    )
    key = stream_key("sw6", "r1")
    try:
        stream = outbox.open("r1")
        admin.execute_command("CLIENT", "PAUSE", "5000", "WRITE")
        started = time.monotonic()
        try:
            stream.delta(0, "held", 1)
            outbox.flush()
            wait_for(lambda: failed == ["r1"], what="the give-up")
            gave_up_after = time.monotonic() - started
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        assert gave_up_after < 2.0, gave_up_after
        wait_for(lambda: outbox.owed_count() == 0, what="the owed error entry")
        written = entries(admin, key)
        assert isinstance(written[-1], ErrorEvent)
        assert "Redis did not answer in time (TimeoutError)" in written[-1].message
    finally:
        outbox.close()


def test_one_write_that_outlives_its_timeout_is_retried_and_the_stream_lives(redis_url: str) -> None:
    """A machine that stalls for longer than the write timeout (seen on 2-core
    CI: a vLLM worker's write timed out after 2 s) is not a Redis outage: the
    first failure is retried at once. Here the one try outlasts the whole
    retry budget (1 s against 0.75 s) and Redis answers again right after."""
    admin = redis.Redis.from_url(redis_url)
    failed: list[str] = []
    assert WriteRetry().budget_s() < 1.0
    outbox = StreamOutbox(
        stream_client(redis_url, timeout_s=1.0), "sw7", on_failure=failed.append, heartbeat_interval_s=None
    )
    key = stream_key("sw7", "r1")
    try:
        stream = outbox.open("r1")
        admin.execute_command("CLIENT", "PAUSE", "1300", "WRITE")
        stream.delta(0, "held", 1)
        outbox.flush()
        wait_for(lambda: admin.exists(key) == 1, what="the delayed delta")
        stream.done({0: "stop"}, USAGE)
        outbox.flush()
        wait_for(lambda: isinstance(entries(admin, key)[-1], DoneEvent), what="the done entry")
        assert failed == []
        assert outbox.failed_batches == 0
        assert [e.text for e in entries(admin, key) if isinstance(e, DeltaEvent)] == ["held"]
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        outbox.close()


def _failures(model: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "infergate_worker_stream_write_failures_total", {"model": model, "reason": reason}
    )
    return value or 0.0


# Text no encoder can write as UTF-8 (a lone surrogate): the entry cannot be encoded.
UNENCODABLE = "half a pair: \ud800"


def test_an_entry_that_cannot_be_encoded_fails_its_stream_only_and_the_writer_lives(redis_url: str) -> None:
    """The writer thread survives: the bad stream gets an error entry, the
    others of the same batch land, and streams opened later are written."""
    admin = redis.Redis.from_url(redis_url)
    failed: list[str] = []
    outbox = StreamOutbox(
        stream_client(redis_url),
        "sw8",
        on_failure=failed.append,
        heartbeat_interval_s=None,
        model="sw8-model",
    )
    try:
        bad, good = outbox.open("bad"), outbox.open("good")
        bad.delta(0, "fine", 1)
        good.delta(0, "fine", 1)
        bad.delta(0, UNENCODABLE, 1)
        good.done({0: "stop"}, USAGE)
        bad.done({0: "stop"}, USAGE)
        outbox.flush()
        wait_for(lambda: failed == ["bad"], what="the bad stream's failure")
        wait_for(lambda: outbox.owed_count() == 0, what="the owed error entry")
        later = outbox.open("later")
        later.delta(0, "still written", 1)
        later.done({0: "stop"}, USAGE)
        outbox.flush()
        later_key = stream_key("sw8", "later")
        wait_for(lambda: admin.exists(later_key) and admin.xlen(later_key) == 2, what="a later stream")
    finally:
        outbox.close()
    written = entries(admin, stream_key("sw8", "bad"))
    # The owed error replaces what was written of a failed stream.
    assert len(written) == 1 and isinstance(written[0], ErrorEvent)
    assert written[0].status == 500 and "could not be encoded" in written[0].message
    good_entries = entries(admin, stream_key("sw8", "good"))
    assert [type(e) for e in good_entries] == [DeltaEvent, DoneEvent]
    assert _failures("sw8-model", "internal") == 1
    assert _failures("sw8-model", "redis") == 0


def test_async_flavour_survives_an_entry_that_cannot_be_encoded(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    failed: list[str] = []

    async def scenario() -> None:
        outbox = AsyncStreamOutbox(
            async_stream_client(redis_url), "sw9", on_failure=failed.append, heartbeat_interval_s=None,
            model="sw9-model",
        )  # fmt: skip
        outbox.start()
        try:
            bad = outbox.open("bad")
            bad.delta(0, UNENCODABLE, 1)
            # A dead writer task would never drain.
            await asyncio.wait_for(outbox.drain(), 10)
            assert failed == ["bad"] and bad.failed
            later = outbox.open("later")
            later.delta(0, "x", 1)
            later.done({0: "stop"}, USAGE)
            await asyncio.wait_for(outbox.drain(), 10)
            await owed_written(outbox)
        finally:
            await outbox.close()

    asyncio.run(scenario())
    assert [type(e) for e in entries(admin, stream_key("sw9", "later"))] == [DeltaEvent, DoneEvent]
    bad = entries(admin, stream_key("sw9", "bad"))
    assert len(bad) == 1 and isinstance(bad[0], ErrorEvent) and bad[0].status == 500
    assert _failures("sw9-model", "internal") == 1


def test_giving_up_is_counted_by_model(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    failed: list[str] = []
    outbox = StreamOutbox(
        stream_client(redis_url), "sw10", retry=WriteRetry(attempts=2, first_delay_s=0.01),
        on_failure=failed.append, heartbeat_interval_s=None, model="sw10-model",
    )  # fmt: skip
    try:
        streams = [outbox.open(f"r{i}") for i in range(3)]
        with redis_full(admin):
            for stream in streams:
                stream.delta(0, "lost", 1)
            outbox.flush()
            wait_for(lambda: len(failed) == 3, what="the give-up")
    finally:
        outbox.close()
    assert _failures("sw10-model", "redis") == 3
