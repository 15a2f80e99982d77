"""vLLM's own OpenAI server against the router with worker-vllm (issue 3):
same tiny Llama, same engine settings, 1, 8 and 32 concurrent streaming
clients (OpenAI completions, ``ignore_eos``, greedy). Output tokens/s
ratio, and the time to first token and inter-token latency our path adds
(p50, p99). Both servers are up for the whole comparison but never
serve at the same time: each repetition runs one side, then the other (the
order swaps every repetition), and a repetition's ratio compares the two
runs next to each other, so a machine that slows down or speeds up during
the comparison weighs on both alike.

Each level runs at least ``MIN_REQUESTS`` requests (``WAVES`` waves of
``c`` at the higher levels), ``REPS`` times per server; a row gives the
median of the repetitions and their spread (min-max), so one stall does
not decide the result."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ..client import Call
from ..context import Context, ScenarioResult, Target, at_least, below, diff, ms, run_async
from ..core_pinning import ENGINE_TITLE, CorePinner, serving_processes, split_cpus
from ..loadgen import fresh_run
from ..models import ensure_test_models
from ..procstat import CpuMeter
from ..profiling import py_spy_record
from ..stacks import ROOT, BenchStack, Process, free_port

NAME = "vllm"
LEVELS = (1, 8, 32)
MIN_REQUESTS = 100
# At 32 streams 100 requests are three waves and the ramp-up and the last,
# partial wave weigh on the rate; ten waves of c settle it.
WAVES = 10
REPS = 3
PROFILE_REQUESTS = 200
PROFILE_ATTACH_S = 2.0
MODEL = "tiny-llama"
LOAD_GENERATOR = "load generator"
OWN_CORES = "engine on its own cores"
SHARED = "shared cores"
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
# The same engine settings on both sides (vLLM on the CPU: see environment.md).
ENGINE_FLAGS = [
    "--dtype",
    "float32",
    "--enforce-eager",
    "--gpu-memory-utilization",
    "0.2",
    "--max-model-len",
    "1024",
]


def stream_call(kind: str, base_url: str, model: str, tokens: int) -> Call:
    return Call(
        kind,
        f"{base_url}/completions",
        lambda i: {
            "model": model,
            "prompt": f"Request {i}: tell me about the weather in a small town by the sea",
            "max_tokens": tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        mode="sse",
    )


def _rep(call: Call, c: int, count: int, duration: float, roots: dict[str, int]) -> dict[str, Any]:
    """One run, with the CPU the serving side used per output token: each
    of ``roots``' process trees without vLLM's engine processes, and this
    process (the load generator); the warm-up requests included."""
    groups = {name: serving_processes([pid]) for name, pid in roots.items()}
    groups[LOAD_GENERATOR] = [os.getpid()]
    meters = {name: CpuMeter(pids).start() for name, pids in groups.items()}
    summary = run_async(fresh_run(call, c, count, duration, warmup=min(c, 4))).summary()
    used = {name: meter.stop() for name, meter in meters.items()}
    if summary["tokens"]:
        per_token = {name: round(cpu / summary["tokens"] * 1e6, 1) for name, cpu in used.items()}
        summary["serving_cpu_us_per_token"] = {**per_token, "total": round(sum(per_token.values()), 1)}
    return summary


Sweep = list[list[dict[str, Any]]]
THEIRS = "vllm"
OURS = "ours"


@dataclass(frozen=True)
class Side:
    """One server of the comparison: its requests and the roots of the
    process trees whose CPU counts as its serving CPU."""

    call: Call
    roots: dict[str, int]


def requests_for(c: int, requests_per_level: int) -> int:
    return max(requests_per_level, WAVES * c)


def _sweep(sides: dict[str, Side], requests_per_level: int, duration: float) -> dict[str, Sweep]:
    """Per level, ``REPS`` repetitions; each runs both sides one after the
    other, ``requests_for(c)`` requests (or ``duration``) each, the first
    side swapping every repetition."""
    swept: dict[str, Sweep] = {name: [] for name in sides}
    for c in LEVELS:
        for reps in swept.values():
            reps.append([])
        for rep in range(REPS):
            order = list(sides) if rep % 2 == 0 else list(reversed(sides))
            for name in order:
                side = sides[name]
                count = requests_for(c, requests_per_level)
                swept[name][-1].append(_rep(side.call, c, count, duration, side.roots))
    return swept


def _median(values: list[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return statistics.median(known) if known else None


def _spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{min(known):.4g}-{max(known):.4g}" if known else "-"


def _vllm_server(stack: BenchStack, model_dir: Path) -> tuple[Process, str]:
    port = free_port()
    process = Process(
        "vllm-openai",
        [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--served-model-name", MODEL, "--port", str(port), "--host", "127.0.0.1", *ENGINE_FLAGS],
        stack.logs / "vllm-openai.log",
        env=stack.stack._service_env(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_until(lambda: requests.get(f"{url}/v1/models", timeout=2).ok, 300, "serving")
    except BaseException:
        process.stop()
        raise
    return process, f"{url}/v1"


def _profile(
    ctx: Context, result: ScenarioResult, stack: BenchStack, worker_pid: int, call: Call, duration: float
) -> None:
    """Our path again at 8 streams under py-spy: the router and worker-vllm
    (with its engine subprocess). ``PROFILE_REQUESTS`` requests, a few
    seconds of load, after ``PROFILE_ATTACH_S`` for py-spy to attach (16
    requests, as before, ended before it had: the profiles came back empty)."""
    with (
        py_spy_record(stack.router_pids()[0], ctx.profile_path(NAME)) as router,
        py_spy_record(worker_pid, ctx.profile_path(NAME, "worker"), subprocesses=True) as worker,
    ):
        time.sleep(PROFILE_ATTACH_S)
        run_async(fresh_run(call, 8, PROFILE_REQUESTS, duration))
    result.profile = router
    result.profiles["worker-vllm"] = worker


def _stack_pids(stack: BenchStack) -> dict[str, int]:
    """redis-server, the registry and the router (gunicorn's master: its
    workers are in its tree), by name."""
    pids = {"redis": int(stack.stack.redis.pidfile.read_text().strip())}
    for name, process in (("registry", stack.stack.registry), ("router", stack.stack.router)):
        if process is not None:
            pids[name] = process.pid
    return pids


Split = tuple[set[int], set[int]] | None


def _layouts(
    sides: dict[str, Side], requests_per_level: int, duration: float, split: Split
) -> dict[str, dict[str, Sweep]]:
    """The sweep with the engine on cores of its own (when there are two),
    then with every process on every core."""
    swept: dict[str, dict[str, Sweep]] = {}
    if split is not None:
        roots = {pid for side in sides.values() for pid in side.roots.values()}
        with CorePinner(roots, *split) as pinner:
            swept[OWN_CORES] = _sweep(sides, requests_per_level, duration)
        if len(pinner.engine_processes) < len(sides):
            found = f"{len(pinner.engine_processes)} {ENGINE_TITLE.decode()} processes"
            raise RuntimeError(f"{found} under {roots}, fewer than one per server")
    swept[SHARED] = _sweep(sides, requests_per_level, duration)
    return swept


def _cpu_per_token(reps: list[dict[str, Any]], name: str) -> float | None:
    """Median over the repetitions of one process group's CPU per token."""
    return _median([rep.get("serving_cpu_us_per_token", {}).get(name) for rep in reps])


def _by_process(reps: list[dict[str, Any]]) -> str:
    """``name us, ...`` for every process group that used CPU (medians)."""
    names = dict.fromkeys(n for rep in reps for n in rep.get("serving_cpu_us_per_token", {}) if n != "total")
    medians = {name: _cpu_per_token(reps, name) for name in names}
    return ", ".join(f"{name} {value:g}" for name, value in medians.items() if value)


def _rows(result: ScenarioResult, layout: str, theirs: Sweep, ours: Sweep) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c, their_reps, our_reps in zip(LEVELS, theirs, ours, strict=True):
        result.runs += [{**rep, "label": f"{rep['label']}, {layout}"} for rep in their_reps + our_reps]

        def each(metric: str, pct: str, reps: list[dict[str, Any]]) -> list[float | None]:
            return [ms(rep, metric, pct) for rep in reps]

        ratios = [
            round(o["tokens_per_s"] / t["tokens_per_s"], 3) if t["tokens_per_s"] else None
            for t, o in zip(their_reps, our_reps, strict=True)
        ]
        added = {
            f"added_{metric}_{pct}_ms": [
                diff(o, t)
                for o, t in zip(
                    each(f"{metric}_ms", pct, our_reps), each(f"{metric}_ms", pct, their_reps), strict=True
                )
            ]
            for metric in ("ttft", "itl")
            for pct in ("p50", "p99")
        }
        row: dict[str, Any] = {
            "label": f"{c} streams, {layout}",
            "concurrency": c,
            "requests_per_rep": [rep["requests"] for rep in our_reps],
            "vllm_tokens_per_s": _median([rep["tokens_per_s"] for rep in their_reps]),
            "ours_tokens_per_s": _median([rep["tokens_per_s"] for rep in our_reps]),
            "throughput": _median(ratios),  # type: ignore[arg-type]
            "throughput_spread": _spread(ratios),  # type: ignore[arg-type]
            "unit": "ours / vLLM tokens/s (median of reps)",
            "vllm_itl_p50_ms": _median(each("itl_ms", "p50", their_reps)),
            "ours_itl_p50_ms": _median(each("itl_ms", "p50", our_reps)),
            "vllm_serving_cpu_us_per_token": _cpu_per_token(their_reps, "total"),
            "ours_serving_cpu_us_per_token": _cpu_per_token(our_reps, "total"),
            "ours_cpu_us_per_token_by_process": _by_process(our_reps),
            "vllm_cpu_us_per_token_by_process": _by_process(their_reps),
            "errors": sum(rep["errors"] for rep in their_reps + our_reps),
        }
        for name, values in added.items():
            row[name] = _median(values)
            row[f"{name}_spread"] = _spread(values)
        rows.append(row)
    return rows


def _targets(rows: list[dict[str, Any]], layout: str) -> list[Target]:
    worst = [row["throughput"] for row in rows if row["throughput"] is not None]
    itl_gaps = [abs(row["added_itl_p50_ms"]) for row in rows if row["added_itl_p50_ms"] is not None]
    worst_ratio = min(worst) if worst else None
    worst_gap = max(itl_gaps) if itl_gaps else None
    return [
        at_least(f"throughput ratio, worst of 1/8/32 streams, {layout}", worst_ratio, 0.95, "x"),
        below(f"added TTFT p50, 1 stream, {layout}", rows[0]["added_ttft_p50_ms"], 5, "ms"),
        below(f"inter-token gap p50 off vLLM's, worst level, {layout}", worst_gap, 1, "ms"),
    ]


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "vLLM comparison",
        "Output tokens/s, TTFT and inter-token latency of vLLM's own OpenAI server against the router "
        f"with worker-vllm (--backend vllm), same {MODEL} and engine flags ({' '.join(ENGINE_FLAGS)}), "
        "streaming completions at 1, 8 and 32 concurrent clients; first with vLLM's engine processes "
        f"({ENGINE_TITLE.decode()}*) on cores of their own and everything else (the load generator "
        "included) on the last core, as a cluster lays them out, then with every process on every core.",
    )
    if not VLLM_PY.exists():
        result.skipped = "no .venv-vllm (bash ci/setup_vllm.sh builds it)"
        return result
    assert ctx.models_dir is not None
    model_dir = ensure_test_models(ctx.models_dir) / MODEL
    tokens = ctx.pick(32, 128)
    requests_per_level = MIN_REQUESTS
    duration = ctx.pick(90.0, 300.0)
    split = split_cpus()
    if split is None:
        result.notes.append("one CPU: the engine cannot have cores of its own; shared cores only")
    else:
        engine, serving = split
        result.notes.append(f"engine cores {sorted(engine)}, serving core {sorted(serving)}")
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        server, vllm_url = _vllm_server(stack, model_dir)
        try:
            cmd = [str(VLLM_PY), "-m", "infergate_worker_vllm", "--backend", "vllm", "--model_name", MODEL,
                   "--model_id", str(model_dir), *ENGINE_FLAGS]  # fmt: skip
            worker = stack.start_worker(MODEL, cmd, timeout_s=300)
            try:
                stack.wait_routable(MODEL)
                sides = {
                    THEIRS: Side(
                        stream_call("vllm openai server", vllm_url, MODEL, tokens),
                        {"vllm api server": server.pid, **_stack_pids(stack)},
                    ),
                    OURS: Side(
                        stream_call("router + worker-vllm", f"{stack.router_url}/openai/v1", MODEL, tokens),
                        {"worker-vllm": worker.process.pid, **_stack_pids(stack)},
                    ),
                }
                swept = _layouts(sides, requests_per_level, duration, split)
                if ctx.profile:
                    _profile(ctx, result, stack, worker.process.pid, sides[OURS].call, duration)
            finally:
                stack.stop_worker(worker)
        finally:
            server.stop()

    for layout, by_side in swept.items():
        rows = _rows(result, layout, by_side[THEIRS], by_side[OURS])
        result.rows += rows
        result.targets += _targets(rows, layout)
    return result
