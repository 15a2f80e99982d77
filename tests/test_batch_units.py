"""The batch service's Redis parts against a real redis-server: one result
per custom_id, atomic status changes, pages, the per-model slots; and the
batch worker's import of the router's dispatch layer without Flask."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from harness.redis_server import RedisServer

from infergate_batch import queue, runs
from infergate_batch.lost_tasks import START, BrokerView, LostTasks, chunk_task
from infergate_batch.objects import BatchObject, BatchRecord, BatchStatus, FileObject, FileRecord, storage_key
from infergate_batch.settings import BatchSettings
from infergate_batch.slots import ModelSlots
from infergate_batch.storage import open_storage
from infergate_batch.store import BatchStore
from infergate_common.errors import NotFound
from infergate_common.registry_api import ModelRecord, ReplicaRecord
from infergate_common.worker_api import Backend, Task
from infergate_router.load_report import LoadReporter
from infergate_router.replica_choice import InFlight


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    running = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RedisServer) -> Iterator[redis.Redis]:
    connection = server.client()
    yield connection
    connection.close()


@pytest.fixture
def store(client: redis.Redis, request: pytest.FixtureRequest) -> BatchStore:
    return BatchStore(client, f"t-{request.node.name}")


def batch(batch_id: str) -> BatchRecord:
    obj = BatchObject(
        id=batch_id,
        endpoint="/v1/embeddings",
        input_file_id="file-x",
        completion_window="24h",
        status=BatchStatus.VALIDATING,
        created_at=int(time.time()),
    )
    return BatchRecord(batch=obj)


def test_a_custom_id_gets_one_result(store: BatchStore) -> None:
    assert store.put_line("b1", "x", '{"first": true}', failed=False)
    assert not store.put_line("b1", "x", '{"second": true}', failed=False)
    assert not store.put_line("b1", "x", '{"as error": true}', failed=True)
    assert store.put_line("b1", "y", '{"error": true}', failed=True)
    assert not store.put_line("b1", "y", '{"ok later": true}', failed=False)
    assert store.counts("b1") == (1, 1)
    assert store.lines_of("b1", ["x", "y", "z"]) == [
        ('{"first": true}', None),
        (None, '{"error": true}'),
        (None, None),
    ]
    assert store.has_line("b1", "x") and not store.has_line("b1", "z")


def test_racing_writers_leave_one_line(store: BatchStore) -> None:
    wins: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: wins.append(store.put_line("b2", "same", f'"{i}"', i % 2 == 0)))
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1
    assert sum(store.counts("b2")) == 1


def test_status_changes_are_atomic(store: BatchStore) -> None:
    store.add_batch(batch("b3"))
    assert store.active_batches() == ["b3"]

    def bump(record: BatchRecord) -> bool:
        record.batch.request_counts.total += 1
        return True

    threads = [threading.Thread(target=store.update_batch, args=("b3", bump)) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get_batch("b3").batch.request_counts.total == 10

    def finish(record: BatchRecord) -> bool:
        record.batch.status = BatchStatus.COMPLETED
        return True

    store.update_batch("b3", finish)
    assert store.active_batches() == []
    with pytest.raises(NotFound):
        store.get_batch("nope")


def test_pages_and_owners(store: BatchStore) -> None:
    for i in range(5):
        store.add_batch(batch(f"p{i}"))
    store.add_batch(batch("theirs").model_copy(update={"owner": "key-b"}))
    page, more = store.list_batches("key-a", None, 2)
    assert [b.id for b in page] == ["p4", "p3"] and more
    page, more = store.list_batches("key-a", "p3", 10)
    assert [b.id for b in page] == ["p2", "p1", "p0"] and not more
    assert "theirs" in [b.id for b in store.list_batches("key-b", None, 10)[0]]
    with pytest.raises(NotFound):
        store.get_batch("theirs", "key-a")
    for i in range(3):
        file = FileObject(id=f"f{i}", bytes=1, created_at=0, filename="x", purpose="batch")
        store.add_file(FileRecord(file=file))
    oldest_first, more = store.list_files(None, "batch", None, 2, newest_first=False)
    assert [f.id for f in oldest_first] == ["f0", "f1"] and more


def model(name: str, replicas: int) -> ModelRecord:
    return ModelRecord(
        name=name,
        model_id="m",
        task=Task.TEXT_GENERATION,
        backend=Backend.NULL,
        replicas=[ReplicaRecord(url=f"http://r{i}") for i in range(replicas)],
    )


def test_slots_cap_lines_per_model(client: redis.Redis) -> None:
    settings = BatchSettings(batch_lines_per_replica=2)
    slots = ModelSlots(client, "t-slots", settings, lease_s=30)
    two = model("two-replicas", 2)
    holders = [f"h{i}" for i in range(5)]
    assert [slots.try_acquire(two, h) for h in holders] == [True, True, True, True, False]
    assert slots.in_use("two-replicas") == 4
    slots.release(two, "h0")
    assert slots.try_acquire(two, "h4")
    fixed = ModelSlots(client, "t-slots", BatchSettings(batch_model_concurrency=1), lease_s=30)
    assert fixed.try_acquire(model("one", 3), "a") and not fixed.try_acquire(model("one", 3), "b")
    for holder in holders:
        slots.release(two, holder)
    fixed.release(model("one", 3), "a")


def _acquired(slots: ModelSlots, record: ModelRecord, count: int) -> list[bool]:
    got = [slots.try_acquire(record, f"line-{i}") for i in range(count)]
    for i in range(count):
        slots.release(record, f"line-{i}")
    return got


def test_interactive_load_lowers_the_cap(client: redis.Redis) -> None:
    """The routers' reports (the real reporter over a real in-flight table)
    take one batch slot per interactive request, down to the floor, and
    give them back when the requests end."""
    busy = model("busy", 2)  # 2 lines per replica: a cap of 4
    slots = ModelSlots(client, "t-load", BatchSettings(batch_lines_per_replica=2), lease_s=30)
    inflight = InFlight()
    reporter = LoadReporter(client, "t-load", inflight, interval_s=0.5)
    assert _acquired(slots, busy, 5) == [True] * 4 + [False]

    urls = []
    for _ in range(3):
        urls.append(inflight.choose(busy).url)
        inflight.acquire(urls[-1])
    reporter.report()
    assert _acquired(slots, busy, 2) == [True, False]  # 4 - 3 interactive

    for _ in range(3):
        urls.append(inflight.choose(busy).url)
        inflight.acquire(urls[-1])
    reporter.report()
    assert _acquired(slots, busy, 1) == [False]  # the default floor of 0: batches wait
    moving = ModelSlots(
        client, "t-load", BatchSettings(batch_lines_per_replica=2, batch_min_model_concurrency=1), lease_s=30
    )
    assert _acquired(moving, busy, 2) == [True, False]  # a floor of 1: a batch always moves on

    for url in urls:
        inflight.release(url)
    reporter.report()
    assert _acquired(slots, busy, 5) == [True] * 4 + [False]


def test_a_silent_router_stops_counting(client: redis.Redis) -> None:
    """A router process that reported load and then died (no zero report)
    lowers the cap only until its report expires."""
    busy = model("gone", 1)
    slots = ModelSlots(client, "t-gone", BatchSettings(batch_lines_per_replica=3), lease_s=30)
    inflight = InFlight()
    reporter = LoadReporter(client, "t-gone", inflight, interval_s=0.1)
    for _ in range(2):
        inflight.acquire(inflight.choose(busy).url)
    reporter.report()
    assert _acquired(slots, busy, 2) == [True, False]
    deadline = time.monotonic() + reporter.life_ms / 1000 + 5
    while _acquired(slots, busy, 4) != [True] * 3 + [False]:
        assert time.monotonic() < deadline, "a dead router's load report never expired"
        time.sleep(0.05)


def test_a_dead_holder_frees_its_slot_when_the_lease_ends(client: redis.Redis) -> None:
    one = model("leased", 1)
    dead = ModelSlots(client, "t-lease", BatchSettings(batch_model_concurrency=1), lease_s=0.5)
    assert dead.try_acquire(one, "dead-worker")
    with dead._lock:
        # The renewer of a killed process renews nothing.
        dead._held.clear()
    alive = ModelSlots(client, "t-lease", BatchSettings(batch_model_concurrency=1), lease_s=0.5)
    assert not alive.try_acquire(one, "next")
    deadline = time.monotonic() + 5
    while not alive.try_acquire(one, "next"):
        assert time.monotonic() < deadline, "the dead holder's slot was never freed"
        time.sleep(0.05)
    alive.release(one, "next")


def test_a_held_slot_outlives_its_lease(client: redis.Redis) -> None:
    one = model("renewed", 1)
    slots = ModelSlots(client, "t-renew", BatchSettings(batch_model_concurrency=1), lease_s=0.3)
    assert slots.try_acquire(one, "long-line")
    time.sleep(1.0)
    assert not slots.try_acquire(one, "other"), "a running line lost its slot"
    slots.release(one, "long-line")
    assert slots.try_acquire(one, "other")
    slots.release(one, "other")


# ------------------------------------------------------------ lost tasks


def chunk_args(index: int) -> dict[str, int]:
    return {"index": index, "first_line": 1 + 10 * index, "count": 10, "start": 0, "end": 1}


def test_the_broker_view_sees_queued_and_unacknowledged_tasks(server: RedisServer) -> None:
    settings = BatchSettings(redis_url=server.url, stream_prefix="t-view", batch_visibility_timeout_s=3)
    app = queue.make_celery(settings)
    queue.send(app, queue.START, "b-new")
    for index in range(3):
        queue.send(app, queue.RUN_CHUNK, "b-run", chunk_args(index))
    queue.send(app, queue.FINALIZE, "b-run")
    view = BrokerView.of(settings, server.client())
    assert view is not None
    assert view.held() == {"b-new": {START}, "b-run": {chunk_task(0), chunk_task(1), chunk_task(2)}}
    # A worker takes the oldest task and holds it unacknowledged, as Celery's
    # consumer does with acks_late: it moves from the queue to ``unacked``.
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        # A worker killed holding the lock of the restore look blocks restores this long.
        assert channel.unacked_mutex_expire == 5
        taken = channel.basic_get(queue.QUEUE, no_ack=False)
        assert taken is not None and taken.headers["task"] == queue.START
        assert server.client().hlen(view.unacked_key) == 1
        assert view.held() == {"b-new": {START}, "b-run": {chunk_task(0), chunk_task(1), chunk_task(2)}}
        taken.ack()
    assert view.held() == {"b-run": {chunk_task(0), chunk_task(1), chunk_task(2)}}
    # Other brokers are not watched: they keep a task until it is acknowledged.
    other = settings.model_copy(update={"batch_broker_url": "amqp://guest@rabbit//"})
    assert BrokerView.of(other, server.client()) is None


def running_batch(batch_id: str, chunks: int) -> BatchRecord:
    record = batch(batch_id)
    record.batch.status = BatchStatus.IN_PROGRESS
    record.chunks, record.enqueued = chunks, True
    return record


def test_a_task_missing_from_the_broker_twice_is_lost(server: RedisServer) -> None:
    settings = BatchSettings(redis_url=server.url, stream_prefix="t-lost")
    app = queue.make_celery(settings)
    # Chunks 0 and 1 are done, 2 waits in the queue, 3 is gone.
    queue.send(app, queue.RUN_CHUNK, "b", chunk_args(2))
    view = BrokerView.of(settings, server.client())
    record = running_batch("b", chunks=4)
    done = {"0", "1"}
    lost = LostTasks(server.client(), "t-lost:watch", view, after_s=10)
    assert lost.check(record, done, lines=20, now=100.0) == set(), "first sight"
    assert lost.check(record, done, lines=20, now=105.0) == set(), "still moving within after_s"
    # Progress restarts the clock.
    assert lost.check(record, done, lines=21, now=109.0) == set()
    assert lost.check(record, done, lines=21, now=118.0) == set()
    # Stalled for after_s: the first look finds chunk 3 missing, the next confirms it.
    assert lost.check(record, done, lines=21, now=119.5) == set()
    lost = LostTasks(lost.client, lost.key, view, lost.after_s)  # the next sweep, maybe in another worker
    assert lost.check(record, done, lines=21, now=120.0) == {chunk_task(3)}
    # Sent again: the clock starts over, and nothing is sent twice at once.
    assert lost.check(record, done, lines=21, now=121.0) == set()
    lost.forget([])
    assert lost.client.hlen(lost.key) == 0


def test_a_task_seen_again_at_the_second_look_is_not_lost(server: RedisServer) -> None:
    settings = BatchSettings(redis_url=server.url, stream_prefix="t-back")
    app = queue.make_celery(settings)
    view = BrokerView.of(settings, server.client())
    record = running_batch("b", chunks=1)
    lost = LostTasks(server.client(), "t-back:watch", view, after_s=1)
    assert lost.check(record, set(), lines=0, now=0.0) == set()
    assert lost.check(record, set(), lines=0, now=2.0) == set(), "first look: missing"
    # Restored by the transport (a dead worker's task after the visibility timeout).
    queue.send(app, queue.RUN_CHUNK, "b", chunk_args(0))
    lost = LostTasks(lost.client, lost.key, view, lost.after_s)
    assert lost.check(record, set(), lines=0, now=2.5) == set()
    # A batch not yet cut into chunks needs its start task.
    fresh = batch("c")
    assert lost.check(fresh, set(), lines=0, now=0.0) == set()
    assert lost.check(fresh, set(), lines=0, now=2.0) == set()
    lost = LostTasks(lost.client, lost.key, view, lost.after_s)
    assert lost.check(fresh, set(), lines=0, now=3.0) == {START}
    lost.forget(["b"])
    assert lost.client.hkeys(lost.key) == ["b"]


def test_a_watch_entry_it_cannot_read_starts_the_watch_again(server: RedisServer) -> None:
    settings = BatchSettings(redis_url=server.url, stream_prefix="t-odd")
    view = BrokerView.of(settings, server.client())
    lost = LostTasks(server.client(), "t-odd:watch", view, after_s=1)
    lost.client.hset(lost.key, "b", '{"from": "another version"}')
    record = running_batch("b", chunks=1)
    assert lost.check(record, set(), lines=0, now=0.0) == set()
    assert lost.check(record, set(), lines=0, now=2.0) == set()
    lost = LostTasks(lost.client, lost.key, view, lost.after_s)
    assert lost.check(record, set(), lines=0, now=3.0) == {chunk_task(0)}


def test_a_batch_whose_input_is_gone_does_not_stop_the_sweep(server: RedisServer, tmp_path: Path) -> None:
    """Batch ``a`` lost a chunk and its input file is gone, so the chunk
    cannot be cut again; batch ``b`` after it still gets its lost chunk back."""
    settings = BatchSettings(
        redis_url=server.url,
        stream_prefix="t-sweep",
        batch_storage_url=str(tmp_path),
        batch_lost_task_after_s=0.01,
        batch_chunk_lines=2,
    )
    client = server.client()
    store = BatchStore(client, settings.stream_prefix)
    storage = open_storage(settings)
    for batch_id in ("a", "b"):
        record = running_batch(batch_id, chunks=2)
        record.batch.input_file_id = f"file-{batch_id}"
        store.add_batch(record)
        store.chunk_done(batch_id, 0)
    with storage.writer(storage_key("file-b")) as out:
        out.write(b"".join(b'{"custom_id": "%d"}\n' % i for i in range(4)))
    app = queue.make_celery(settings)
    parts = runs.BatchParts(
        settings,
        app,
        client,
        store,
        storage,
        None,
        None,
        BrokerView.of(settings, client),  # type: ignore[arg-type]
    )
    view = parts.broker
    assert view is not None
    for _ in range(3):  # watch, first look, second look
        runs.sweep(parts)
        time.sleep(0.02)
    assert view.held() == {"b": {chunk_task(1)}}
    resent = [raw for raw in client.lrange(view.queue_key, 0, -1) if "run_chunk" in raw]
    assert len(resent) == 1


def test_the_batch_worker_never_imports_flask() -> None:
    code = (
        "import sys, infergate_batch.worker, infergate_batch.runs;"
        "from infergate_router.services import RouterServices;"
        "print(sorted(m for m in sys.modules if m == 'flask' or m.startswith('flask.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.strip() == "[]", out.stdout
