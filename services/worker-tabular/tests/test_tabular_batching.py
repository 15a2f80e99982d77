"""The row batcher over a real XGBoost model: what joins a batch, what
stays apart, failures that stay with their request, and batching on giving
the same answers as batching off."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import xgboost as xgb
from conftest import rows_body
from tabular_models import BuiltModel

from infergate_common.worker_api import TabularPredictRequest
from infergate_worker_tabular.batching import RowBatcher
from infergate_worker_tabular.engine import TabularEngine

DEADLINE_S = 10.0


class GatedModel:
    """A real booster whose calls can be held at a gate, so requests queue
    behind a running prediction; records the rows of every call."""

    def __init__(self, booster: xgb.Booster) -> None:
        self.booster = booster
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[int, Hashable]] = []
        self.entered = threading.Event()

    def __call__(self, rows: np.ndarray, key: Hashable) -> np.ndarray:
        self.calls.append((len(rows), key))
        self.entered.set()
        self.gate.wait(DEADLINE_S)
        return np.asarray(self.booster.inplace_predict(rows, predict_type="margin" if key else "value"))


@pytest.fixture
def booster(built: dict[str, BuiltModel]) -> xgb.Booster:
    booster = xgb.Booster()
    booster.load_model(str(built["xgb-multi-ubj"].folder / "model.ubj"))
    return booster


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(64, 6)).astype(np.float32)


def _wait_queued(batcher: RowBatcher, count: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while len(batcher._queue) < count:
        assert time.monotonic() < deadline, f"{len(batcher._queue)} of {count} requests queued"
        time.sleep(0.005)


Queued = Sequence[tuple[np.ndarray, Hashable]]


def _hold_then_queue(
    model: GatedModel, batcher: RowBatcher, pool: ThreadPoolExecutor, requests: Queued
) -> list[np.ndarray]:
    """Submit one request and hold it in the model, queue ``requests``
    behind it, then open the gate; the futures of all of them."""
    model.gate.clear()
    first = pool.submit(batcher.submit, requests[0][0][:1], requests[0][1])
    assert model.entered.wait(DEADLINE_S)
    futures = [first]
    for array, key in requests:
        futures.append(pool.submit(batcher.submit, array, key))
        _wait_queued(batcher, len(futures) - 1)
    model.gate.set()
    return [future.result(DEADLINE_S) for future in futures]


def test_requests_queued_behind_a_prediction_run_as_one_call(booster: xgb.Booster, rows: np.ndarray) -> None:
    model = GatedModel(booster)
    batcher = RowBatcher(model, max_requests=64, max_rows=10_000)
    batcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            parts = [(rows[i * 4 : (i + 1) * 4], False) for i in range(10)]
            results = _hold_then_queue(model, batcher, pool, parts)
    finally:
        batcher.stop()
    assert model.calls == [(1, False), (40, False)]
    for (array, _), result in zip(parts, results[1:], strict=True):
        np.testing.assert_array_equal(result, booster.inplace_predict(array))
    assert batcher.stats.snapshot()["largest_batch_requests"] == 10


def test_other_output_options_and_row_limits_keep_apart(booster: xgb.Booster, rows: np.ndarray) -> None:
    model = GatedModel(booster)
    batcher = RowBatcher(model, max_requests=64, max_rows=100)
    batcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            parts = [(rows[:40], False), (rows[:10], True), (rows[:40], False), (rows[:40], False)]
            results = _hold_then_queue(model, batcher, pool, parts)
    finally:
        batcher.stop()
    # Oldest first; a margin request never shares a call with a value request;
    # the third 40-row request would pass 100 rows and waits for the next call.
    assert model.calls == [(1, False), (80, False), (10, True), (40, False)]
    np.testing.assert_array_equal(results[2], booster.inplace_predict(rows[:10], predict_type="margin"))


def test_batching_off_runs_one_request_per_call(booster: xgb.Booster, rows: np.ndarray) -> None:
    model = GatedModel(booster)
    batcher = RowBatcher(model, max_requests=1, max_rows=10_000)
    batcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            _hold_then_queue(model, batcher, pool, [(rows[i : i + 2], False) for i in range(5)])
    finally:
        batcher.stop()
    assert model.calls == [(1, False)] + [(2, False)] * 5


def test_an_idle_batcher_runs_at_once_and_a_wait_gathers(booster: xgb.Booster, rows: np.ndarray) -> None:
    model = GatedModel(booster)
    idle = RowBatcher(model, max_requests=64, max_rows=10_000)
    idle.start()
    try:
        idle.submit(rows[:1])  # answered without anyone else arriving: no timer to wait out
    finally:
        idle.stop()
    assert model.calls == [(1, None)]

    model = GatedModel(booster)
    waiting = RowBatcher(model, max_requests=2, max_rows=10_000, max_wait_s=DEADLINE_S)
    waiting.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(waiting.submit, rows[:1])
            _wait_queued(waiting, 1)
            second = pool.submit(waiting.submit, rows[1:3])
            first.result(DEADLINE_S), second.result(DEADLINE_S)
    finally:
        waiting.stop()
    # Held for up to max_wait for a second request: both ran as one call, once it was full.
    assert model.calls == [(3, None)]


def test_a_request_the_model_refuses_fails_alone(booster: xgb.Booster, rows: np.ndarray) -> None:
    model = GatedModel(booster)
    batcher = RowBatcher(model, max_requests=64, max_rows=10_000)
    batcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            model.gate.clear()
            held = pool.submit(batcher.submit, rows[:1])
            assert model.entered.wait(DEADLINE_S)
            good1 = pool.submit(batcher.submit, rows[:3])
            _wait_queued(batcher, 1)
            bad = pool.submit(batcher.submit, rows[:2, :4])  # four features: XGBoost raises
            _wait_queued(batcher, 2)
            good2 = pool.submit(batcher.submit, rows[3:5])
            _wait_queued(batcher, 3)
            model.gate.set()
            held.result(DEADLINE_S)
            np.testing.assert_array_equal(good1.result(DEADLINE_S), booster.inplace_predict(rows[:3]))
            np.testing.assert_array_equal(good2.result(DEADLINE_S), booster.inplace_predict(rows[3:5]))
            with pytest.raises(ValueError, match="Feature shape mismatch"):
                bad.result(DEADLINE_S)
        # The thread kept serving.
        np.testing.assert_array_equal(batcher.submit(rows[:1]), booster.inplace_predict(rows[:1]))
    finally:
        batcher.stop()
    assert batcher.stats.snapshot()["failed_calls"] == 2  # the joint call, then the bad one alone


@pytest.mark.parametrize("name", ["xgb-multi-ubj", "lgb-multi", "sk-pipeline"])
def test_batching_on_answers_as_batching_off(
    engine_for: Callable[..., TabularEngine], built: dict[str, BuiltModel], name: str
) -> None:
    """32 concurrent requests of 1 to 4 rows each: the same answers either way."""
    rng = np.random.default_rng(11)
    requests = [rng.normal(size=(1 + i % 4, 6)) for i in range(32)]
    on = engine_for(name, max_batch_size=64)
    off = engine_for(name, max_batch_size=1)

    def answers(engine: TabularEngine) -> list[list[object]]:
        with ThreadPoolExecutor(32) as pool:
            futures = [
                pool.submit(engine.predict, TabularPredictRequest(**rows_body(r, request_id=f"r{i}")))
                for i, r in enumerate(requests)
            ]
            return [future.result(DEADLINE_S).predictions for future in futures]

    batched = answers(on)
    assert batched == answers(off)
    expected = built[name].expected(requests[5])
    if expected.dtype.kind in "OU":
        assert batched[5] == expected.tolist()
    else:
        np.testing.assert_allclose(np.asarray(batched[5]), expected, rtol=1e-6)
    assert off.batcher is not None and off.batcher.stats.snapshot()["largest_batch_requests"] == 1
