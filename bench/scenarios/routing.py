"""Replica choice that knows about caches: several benchmark-engine
replicas of one model, each with a bounded prefix cache (the first token
waits for the prefill of the uncached part of the prompt, one prefill at a
time per replica), and many users sharing a few long system prompts
(streamed chat through the router). The same workload runs under each
routing policy, set through the registry's ``PUT .../routing``; for each,
the time to first token and the load balance (each replica's time-averaged
requests in flight: busiest over mean). Last, one more replica joins under
prefix-aware (scale-out), and the run reports its share of the requests:
the system prompts are all known by then, so only the table's rebalancing
gives it any."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import requests

from ..client import Call
from ..context import Context, ScenarioResult, at_least, below, ms, run_async
from ..loadgen import fresh_run
from ..stacks import BenchStack

NAME = "routing"
MODEL = "prefix"
POLICIES = ("fewest_in_flight", "session_affinity", "prefix_aware")
REPLICAS = 4
JOINED = f"prefix_aware, a replica joined ({REPLICAS + 1} replicas)"
SYSTEM_PROMPTS = 8
SYSTEM_WORDS = 400
USERS = 64
CONCURRENCY = 16
BLOCK_TOKENS = 16
# Each replica caches about 3.5 of the 8 system prompts: its share and room for spills.
CACHE_BLOCKS = int(3.5 * SYSTEM_WORDS / BLOCK_TOKENS)
PREFILL_MS_PER_TOKEN = 0.5
TOKENS = 8


def _system_prompts(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    vocabulary = [f"w{n}" for n in range(2000)]
    return [
        f"System prompt {p}: " + " ".join(rng.choice(vocabulary) for _ in range(SYSTEM_WORDS))
        for p in range(SYSTEM_PROMPTS)
    ]


def chat_call(router_url: str) -> Call:
    prompts = _system_prompts()

    def body(i: int) -> dict[str, Any]:
        user = abs(i) % USERS
        return {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": prompts[user % SYSTEM_PROMPTS]},
                {"role": "user", "content": f"user {user} asks question {i} about the topic at hand"},
            ],
            "max_tokens": TOKENS,
            "stream": True,
            "user": f"user-{user}",
        }

    return Call("router chat stream", f"{router_url}/openai/v1/chat/completions", body, mode="sse")


def _stats(files: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in files:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            out.append({})
    return out


def _delta(before: dict[str, Any], after: dict[str, Any], section: str, field: str) -> float:
    """How much one replica's ``section.field`` counter grew between two snapshots."""
    return float(after.get(section, {}).get(field, 0) - before.get(section, {}).get(field, 0))


def _balance(before: list[dict[str, Any]], after: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    means = []
    prompt = cached = 0.0
    for b, a in zip(before, after, strict=True):
        area = _delta(b, a, "load", "in_flight_seconds")
        means.append(area / wall_s if wall_s else 0.0)
        prompt += _delta(b, a, "prefix_cache", "prompt_tokens")
        cached += _delta(b, a, "prefix_cache", "cached_tokens")
    mean = sum(means) / len(means) if means else 0.0
    return {
        "in_flight_per_replica": [round(m, 2) for m in means],
        "max_over_mean_in_flight": round(max(means) / mean, 3) if mean else None,
        "cache_hit_rate": round(cached / prompt, 3) if prompt else None,
    }


def _requests(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[int]:
    """Requests each replica served between two snapshots."""
    return [int(_delta(b, a, "load", "requests")) for b, a in zip(before, after, strict=True)]


def worker_args(stats_file: Path) -> list[str]:
    return [
        "--tokens", str(TOKENS), "--token_interval_ms", "2",
        "--prefix_cache_blocks", str(CACHE_BLOCKS), "--prefix_block_tokens", str(BLOCK_TOKENS),
        "--prefill_ms_per_token", str(PREFILL_MS_PER_TOKEN), "--stats_file", str(stats_file),
    ]  # fmt: skip


def _set_policy(registry_url: str, policy: str) -> None:
    response = requests.put(
        f"{registry_url}/registry/models/{MODEL}/routing", json={"routing_policy": policy}, timeout=5
    )
    response.raise_for_status()


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Replica choice that knows about caches",
        f"{REPLICAS} benchmark-engine replicas, each with a prefix cache of {CACHE_BLOCKS} blocks of "
        f"{BLOCK_TOKENS} words (about 3.5 of the {SYSTEM_PROMPTS} system prompts of {SYSTEM_WORDS} words), "
        f"prefill {PREFILL_MS_PER_TOKEN} ms per uncached word, in chunks of one block, one chunk at a "
        "time per replica; "
        f"{USERS} users (OpenAI user field) over the {SYSTEM_PROMPTS} system prompts, {CONCURRENCY} "
        "streams in flight through the router; per routing policy: time to first token, load balance "
        "(time-averaged requests in flight per replica, busiest over mean) and the cache hit rate.",
    )
    duration = ctx.pick(8.0, 30.0)
    count = ctx.pick(800, 4000)
    workdir = ctx.scenario_dir(NAME)
    with BenchStack(workdir, log_level=ctx.log_level).start() as stack:
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        files = [workdir / f"replica-{i}.json" for i in range(REPLICAS)]
        for path in files:
            stack.null_worker(MODEL, *worker_args(path))
        stack.wait_routable(MODEL)
        registry_url = stack.stack.registry_url
        call = chat_call(stack.router_url)

        def measure(label: str) -> list[int]:
            # The registry's change message drops the router's cache at once;
            # the warm-up also lets the caches settle under this policy.
            time.sleep(0.5)
            run_async(fresh_run(call, CONCURRENCY, 4 * CONCURRENCY, duration, label=f"{label} warm-up"))
            before = _stats(files)
            started = time.monotonic()
            measured = run_async(fresh_run(call, CONCURRENCY, count, duration, label=label))
            wall = time.monotonic() - started
            after = _stats(files)
            summary = measured.summary()
            summary["group"] = label
            result.runs.append(summary)
            result.rows.append(
                {
                    "policy": label,
                    "ttft_p50_ms": ms(summary, "ttft_ms", "p50"),
                    "ttft_p99_ms": ms(summary, "ttft_ms", "p99"),
                    "requests_per_s": summary["requests_per_s"],
                    **_balance(before, after, wall),
                    "errors": summary["errors"],
                }
            )
            return _requests(before, after)

        for policy in POLICIES:
            _set_policy(registry_url, policy)
            measure(policy)

        # Scale-out: one more replica joins while prefix-aware knows every prompt.
        files.append(workdir / f"replica-{REPLICAS}.json")
        stack.null_worker(MODEL, *worker_args(files[-1]))
        served = measure(JOINED)
        newcomer_share = served[-1] / sum(served) if sum(served) else None
        result.rows[-1]["newcomer_share"] = None if newcomer_share is None else round(newcomer_share, 3)

    rows = {row["policy"]: row for row in result.rows}
    fewest, prefix = rows.get("fewest_in_flight", {}), rows.get("prefix_aware", {})
    speedup = None
    if fewest.get("ttft_p50_ms") and prefix.get("ttft_p50_ms"):
        speedup = fewest["ttft_p50_ms"] / prefix["ttft_p50_ms"]
    result.targets = [
        at_least("prefix-aware p50 TTFT, times lower than fewest-in-flight", speedup, 2.0, "x"),
        below("prefix-aware max/mean in flight", prefix.get("max_over_mean_in_flight"), 1.25 + 1e-9, "x"),
        below("errors", float(sum(row["errors"] for row in result.rows)), 1, "requests"),
    ]
    result.notes.append(
        "One router process, so its in-flight counts are the whole picture; several router processes "
        "each bound their own share."
    )
    return result
