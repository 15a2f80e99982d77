"""worker-tabular's cross-request batching, through the router (KServe v1).

An XGBoost binary classifier of realistic size (300 trees of depth 6 on 50
features, trained here in a few seconds and saved as ``model.ubj``) served by
worker-tabular with batching on (``--max_batch_size 64``) and off
(``--max_batch_size 1``: one prediction call per request, in arrival order,
as KServe's xgbserver answers), both running, taking turns case by case
(the best of 2 runs each, 3 with ``--full``). For each: 32 concurrent
clients and one client, one row per request and 100 rows per request. The same 32-client
one-row load is also sent to the worker's own ``/predict`` without the router,
which isolates the worker's share.

Each worker runs alone, with KServe's default ``--nthread 1`` (the router and
the load generator share the machine's cores)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..client import Call
from ..context import Context, ScenarioResult, at_least, below, ms, run_async
from ..loadgen import fresh_run
from ..stacks import BenchStack

NAME = "tabular"
FEATURES = 50
TREES = 300
DEPTH = 6
POOL = 4096


def train(folder: Path) -> Path:
    """The benchmark model, trained once per run (a few seconds on 2 cores)."""
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, FEATURES)).astype(np.float32)
    score = x[:, :8] @ rng.normal(size=8) + np.sin(x[:, 8] * 2) + rng.normal(scale=0.5, size=len(x))
    model = xgb.XGBClassifier(n_estimators=TREES, max_depth=DEPTH, tree_method="hist", n_jobs=2)
    model.fit(x, (score > 0).astype(int))
    folder.mkdir(parents=True, exist_ok=True)
    model.get_booster().save_model(str(folder / "model.ubj"))
    return folder


def _rows() -> list[list[float]]:
    rng = np.random.default_rng(1)
    return np.round(rng.normal(size=(POOL, FEATURES)), 4).tolist()  # type: ignore[no-any-return]


def _row(case: str, summary: dict[str, Any], rows_per_request: int) -> dict[str, Any]:
    return {
        "case": case,
        "concurrency": summary["concurrency"],
        "throughput": summary["requests_per_s"],
        "unit": "requests/s",
        "rows_per_s": round(summary["requests_per_s"] * rows_per_request, 1),
        "p50_ms": ms(summary, "latency_ms", "p50"),
        "p99_ms": ms(summary, "latency_ms", "p99"),
        "requests": summary["requests"],
        "errors": summary["errors"],
    }


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Tabular batching gains",
        f"XGBoost binary classifier ({TREES} trees, depth {DEPTH}, {FEATURES} features, model.ubj) on "
        "worker-tabular, KServe v1 predict through the router: requests/s and p99 with batching on "
        "(max_batch_size 64) and off (1), at 32 and 1 clients, 1 and 100 rows per request; the worker's "
        "own /predict at 32 clients as the router-free reference.",
    )
    duration = ctx.pick(5.0, 20.0)
    folder = train(ctx.scenario_dir(NAME) / "xgb-bench")
    pool = _rows()

    def v1_call(url: str, name: str, size: int) -> Call:
        return Call(
            f"{name} v1 {size} row(s)",
            url,
            lambda i: {"instances": [pool[(i * size + k) % POOL] for k in range(size)]},
        )

    def direct_call(url: str, name: str) -> Call:
        return Call(
            f"{name} worker /predict",
            f"{url}/predict",
            lambda i: {"request_id": f"b{i}", "shape": [1, FEATURES], "data": pool[i % POOL]},
        )

    rounds = ctx.pick(2, 3)
    cases: list[tuple[str, int, int]] = [("v1", 32, 1), ("v1", 1, 1), ("v1", 32, 100), ("v1", 1, 100)]
    cases.append(("direct", 32, 1))
    runs: dict[str, dict[str, Any]] = {}
    every: list[dict[str, Any]] = []
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        workers = {}
        try:
            for label, batch in (("on", "64"), ("off", "1")):
                name = f"xgb-batch-{label}"
                cmd = [
                    sys.executable, "-m", "infergate_worker_tabular", "--model_name", name,
                    "--model_dir", str(folder), "--nthread", "1", "--max_batch_size", batch,
                ]  # fmt: skip
                workers[label] = stack.start_worker(name, cmd)
                stack.wait_routable(name)
            # On and off take turns, each case several times: the machine's other
            # load varies over a run and falls on both alike; the best run of each counts.
            for kind, clients, size in cases:
                for _ in range(rounds):
                    for label, worker in workers.items():
                        name = f"xgb-batch-{label}"
                        if kind == "direct":
                            call = direct_call(worker.url, name)
                        else:
                            call = v1_call(f"{stack.router_url}/v1/models/{name}:predict", name, size)
                        summary = run_async(
                            fresh_run(call, clients, 1_000_000, duration, warmup=clients)
                        ).summary()
                        every.append(summary)
                        key = f"{label} direct" if kind == "direct" else f"{label} {clients} {size}"
                        best = runs.get(key)
                        if best is None or summary["requests_per_s"] > best["requests_per_s"]:
                            runs[key] = summary
        finally:
            for worker in workers.values():
                stack.stop_worker(worker)

    result.runs += every
    for clients, size in ((32, 1), (1, 1), (32, 100), (1, 100)):
        for label in ("on", "off"):
            case = f"batching {label}, {clients} client{'s' if clients > 1 else ''}, {size} row(s)/request"
            result.rows.append(_row(case, runs[f"{label} {clients} {size}"], size))
    for label in ("on", "off"):
        result.rows.append(
            _row(f"batching {label}, worker /predict direct, 32 clients", runs[f"{label} direct"], 1)
        )

    def ratio(a: str, b: str, key: str = "requests_per_s") -> float | None:
        top, bottom = runs[a].get(key), runs[b].get(key)
        return round(top / bottom, 2) if top and bottom else None

    p99_on = ms(runs["on 32 1"], "latency_ms", "p99")
    p99_off = ms(runs["off 32 1"], "latency_ms", "p99")
    result.targets = [
        at_least(
            "tabular requests/s, 32 clients x 1 row, batching on/off", ratio("on 32 1", "off 32 1"), 3, "x"
        ),
        below(
            "tabular p99, 32 clients x 1 row, batching on/off",
            None if not p99_on or not p99_off else p99_on / p99_off,
            1,
            "x",
        ),
    ]
    result.notes.append(
        f"worker /predict without the router, 32 clients x 1 row: batching on/off "
        f"{ratio('on direct', 'off direct')}x"
    )
    return result
