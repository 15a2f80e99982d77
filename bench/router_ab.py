"""The router of this checkout (A) against the router of another commit (B),
side by side: one redis-server, registry and benchmark-engine worker, two
routers (one gunicorn process each), the same requests sent to each in
alternating rounds, so a machine that speeds up or slows down during the
run weighs on both alike. ``--mode plain``: non-streaming completions at
concurrency 1 and 16; router CPU per request, requests per router
CPU-second, p50 latency. ``--mode relay``: 100 streams of 1,000 tokens at
once from an unpaced engine; tokens relayed per router CPU-second.
``--mode paced``: 64 streams of 200 tokens from an engine that steps every
open stream each 25 ms, as a batching engine does, so each token reaches the
router on its own; router CPU per token.
``--mode kserve``: KServe v1 ``:predict`` calls (one sentence each) to a
benchmark-engine encoder at concurrency 1 and 16, figures as ``plain``.
``--mode encoder``: one client's KServe v1 ``:predict`` calls (one sentence
each) to worker-hf serving the MiniLM-sized classifier (micro-batching on,
2 torch threads), whose forward pass takes several milliseconds. Prints
each figure and the ratio A/B; writes them to
``bench/results/router-ab-<mode>-<time>.json``.

    python -m bench.router_ab --base <commit> [--mode plain|relay|paced|kserve|encoder]
        [--requests 1000] [--rounds 6]

B runs from a ``git worktree`` of ``--base`` (removed at the end), with
that tree's router and common packages first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .client import Call
from .context import run_async
from .loadgen import fresh_run
from .models import ensure_test_models, worker_hf
from .procstat import CpuMeter, children
from .scenarios.batching import sentence
from .scenarios.overhead import completion_calls
from .scenarios.relay import stream_calls
from .stacks import ROOT, BenchStack

LEVELS: tuple[int, ...] = (1, 16)
PACED_STREAMS = 64
PACED_TOKENS = 200
PACED_INTERVAL_MS = 25


def one_sentence(i: int) -> dict[str, Any]:
    """A KServe v1 predict body with one sentence that differs per request."""
    return {"instances": [sentence(i)]}


def _worktree(base: str, where: Path) -> Path:
    tree = where / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), base], check=True,
                   capture_output=True)  # fmt: skip
    return tree


def measure(base_tree: Path, mode: str, requests: int, rounds: int, workdir: Path) -> dict[str, Any]:
    env_b = {"PYTHONPATH": f"{base_tree}/services/router:{base_tree}/services/common"}
    results: dict[str, Any] = {}
    with BenchStack(workdir, log_level="WARNING").start() as stack:
        if mode == "relay":
            worker = stack.null_worker("null", "--stamp_tokens", "--step_streams", "--token_interval_ms", "0",
                                       "--tokens", "100000")  # fmt: skip
            levels: tuple[int, ...] = (100,)
            count = 100
        elif mode == "paced":
            worker = stack.null_worker("null", "--stamp_tokens", "--step_streams", "--token_interval_ms",
                                       str(PACED_INTERVAL_MS), "--tokens", "100000")  # fmt: skip
            levels, count = (PACED_STREAMS,), PACED_STREAMS
        elif mode == "kserve":
            worker = stack.null_worker("null", "--task", "text_embedding")
            levels, count = LEVELS, requests
        elif mode == "encoder":
            model = ensure_test_models(ROOT / "var" / "models") / "minilm-classifier"
            flags = ("--max_batch_size", "32", "--torch_threads", "2")
            worker = stack.start_worker("null", worker_hf("null", model, *flags))  # served as "null" too
            levels, count = (1,), requests
        else:
            worker = stack.null_worker("null", "--tokens", "16")
            levels, count = LEVELS, requests
        stack.wait_routable("null")
        url_b = stack.stack.start_extra_router(1, env_b)
        routers = {
            "A": (stack.router_url, stack.router_pids()),
            "B": (url_b, children(stack.stack.extra_routers[0].pid)),
        }

        def call(url: str) -> Any:
            if mode == "relay":
                return stream_calls(worker.url, url, "null", 1000)[1]
            if mode == "paced":
                return stream_calls(worker.url, url, "null", PACED_TOKENS)[1]
            if mode == "kserve":
                return Call(
                    "router v1 predict", f"{url}/v1/models/null:predict", lambda i: {"instances": [f"s {i}"]}
                )
            if mode == "encoder":
                return Call("router v1 predict", f"{url}/v1/models/null:predict", one_sentence)
            return completion_calls(worker.url, url, "null")[1]

        async def run() -> None:
            for c in levels:
                cpu = {"A": 0.0, "B": 0.0}
                done = {"A": 0, "B": 0}
                tokens = {"A": 0, "B": 0}
                errors = {"A": 0, "B": 0}
                p50s: dict[str, list[float]] = {"A": [], "B": []}
                for url, _ in routers.values():
                    # Warm both (connections, caches, the model list) before counting.
                    await fresh_run(call(url), c, min(count, 200), 60, warmup=min(c, 16))
                for r in range(rounds):
                    for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                        url, pids = routers[name]
                        meter = CpuMeter(pids).start()
                        summary = (await fresh_run(call(url), c, count, 120)).summary()
                        cpu[name] += meter.stop()
                        done[name] += summary["requests"] - summary["errors"]
                        errors[name] += summary["errors"]
                        tokens[name] += summary.get("tokens") or 0
                        p50s[name].append(summary["latency_ms"]["p50"])
                level: dict[str, Any] = {}
                for name in ("A", "B"):
                    level[name] = {
                        "router_cpu_s": round(cpu[name], 2),
                        "router_cpu_us_per_request": round(cpu[name] / max(done[name], 1) * 1e6, 1),
                        "requests_per_router_cpu_s": round(done[name] / cpu[name], 1),
                        "tokens_per_router_cpu_s": round(tokens[name] / cpu[name], 1),
                        "router_cpu_us_per_token": round(cpu[name] / max(tokens[name], 1) * 1e6, 1),
                        "errors": errors[name],
                        "p50_ms_median": round(statistics.median(p50s[name]), 3),
                        "p50_ms_rounds": [round(x, 3) for x in p50s[name]],
                    }
                level["cpu_ratio_a_over_b"] = round(
                    level["A"]["router_cpu_us_per_request"] / level["B"]["router_cpu_us_per_request"], 3
                )
                results[f"c={c}"] = level

        run_async(run())
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit B runs (A is this checkout)")
    parser.add_argument("--mode", choices=("plain", "relay", "paced", "kserve", "encoder"), default="plain")
    parser.add_argument("--requests", type=int, default=1000, help="requests per round (not relay)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per router and level")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="router-ab-") as tmp:
        tree = _worktree(args.base, Path(tmp))
        try:
            results = measure(tree, args.mode, args.requests, args.rounds, Path(tmp) / "stack")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    record = {"a": f"{head} (working tree)", "b": args.base, "mode": args.mode, "requests": args.requests,
              "rounds": args.rounds, "results": results}  # fmt: skip
    out = ROOT / "bench" / "results" / f"router-ab-{args.mode}-{time.strftime('%Y-%m-%d-%H%M')}.json"
    if out.exists():
        # Two runs finished in one minute (a run can take half of one): never write over the first.
        out = out.with_name(f"router-ab-{args.mode}-{time.strftime('%Y-%m-%d-%H%M%S')}.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    for level, values in results.items():
        for name in ("A", "B"):
            v = values[name]
            print(
                f"{level} {name}: {v['router_cpu_us_per_request']} us router CPU/request, "
                f"{v['requests_per_router_cpu_s']} requests/router CPU-s, "
                f"{v['tokens_per_router_cpu_s']} tokens/router CPU-s, p50 {v['p50_ms_median']} ms, "
                f"{v['errors']} errors"
            )
        print(f"{level} A/B router CPU per request: {values['cpu_ratio_a_over_b']}")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
