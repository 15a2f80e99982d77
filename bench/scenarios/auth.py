"""The cost of API keys and rate limits: the same non-streaming completion
through one router process without a key, with a key, and with a key under
requests- and tokens-per-minute limits (admitted from blocks of the limit
the process reserves in Redis, one round trip per block; the tokens counted
in the process and sent to Redis in batches). The keys are made through the
registry's admin API; the router does not require them, so the three kinds
of request meet the same process. Runs alternate, three times each, so
drift on a shared machine falls on every side alike.

The scenario also times the added work itself, in this process against the
same redis-server: the key lookup, and the admission and settling of a busy
key and of a key with a concurrency limit (checked in Redis per request)."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import redis
import requests

from infergate_common.api_keys import KeyLimits, digest
from infergate_router.auth.keystore import KeyStore
from infergate_router.auth.limiter import RateLimiter, Scope

from ..client import Call
from ..context import Context, ScenarioResult, below, diff, ms, run_async
from ..loadgen import fresh_run
from ..stacks import BenchStack

NAME = "auth"
LEVELS = (1, 16)
PROMPT = "The quick brown fox jumps over the lazy dog"
TOKENS = 16
ROUNDS = 3
# High enough never to refuse during the run: the cost measured is the check.
LIMITS = {"rpm": 10_000_000, "tpm": 1_000_000_000}


def _admin_key(stack: BenchStack, **spec: Any) -> str:
    response = requests.post(
        f"{stack.stack.registry_url}/admin/keys", json=spec, headers=stack.stack.admin_headers(), timeout=10
    )
    response.raise_for_status()
    return str(response.json()["key"])


def _call(kind: str, router_url: str, key: str | None) -> Call:
    headers = (("Authorization", f"Bearer {key}"),) if key else ()
    return Call(
        kind,
        f"{router_url}/openai/v1/completions",
        lambda i: {"model": "null", "prompt": PROMPT, "max_tokens": TOKENS},
        headers=headers,
    )


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_ms": round(ordered[len(ordered) // 2] / 1e6, 4),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] / 1e6, 4),
    }


def time_the_checks(redis_url: str, count: int) -> list[dict[str, Any]]:
    """The key lookup, the admission and the settling, each timed on its own:
    for a busy key (admitted from the process's blocks of its limit, one
    request in ``MOST`` asking Redis for a new block) and for a key with a
    concurrency limit (every request in Redis: one round trip each way)."""
    client = redis.Redis.from_url(redis_url)
    try:
        limiter = RateLimiter(client, f"bench{uuid.uuid4().hex[:6]}", lease_s=660, fail_open=False)
        busy = Scope("key:bench", KeyLimits(**LIMITS))
        slots = Scope("key:slots", KeyLimits(**LIMITS, max_concurrent=1_000_000))
        secret = "igk-" + uuid.uuid4().hex
        keys = KeyStore([secret], None, None, required=True)
        limiter.admit([busy], "warm")
        lookup: list[int] = []
        timed: list[tuple[Scope, list[int], list[int]]] = [(busy, [], []), (slots, [], [])]
        for i in range(count):
            start = time.perf_counter_ns()
            keys.lookup(secret)
            lookup.append(time.perf_counter_ns() - start)
            for scope, admit, settle in timed:
                start = time.perf_counter_ns()
                limiter.admit([scope], f"m{i}")
                admitted = time.perf_counter_ns()
                limiter.settle([scope], f"m{i}", 32)
                admit.append(admitted - start)
                settle.append(time.perf_counter_ns() - admitted)
        assert digest(secret) in keys.static
        # Redis's own time per script call, free of the client's scheduling.
        stats = client.info("commandstats")
        server_us = float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))
        # What this process still owes Redis goes now, while Redis is up: the
        # limiter's thread has nothing left to retry once the stack stops.
        limiter.flush()
    finally:
        client.close()
    (_, busy_admit, busy_settle), (_, slot_admit, slot_settle) = timed
    return [
        {"check": "key lookup (SHA-256 + dict)", **_percentiles(lookup)},
        {"check": "admission, busy key (from the process's block)", **_percentiles(busy_admit)},
        {"check": "settling, busy key (counted in the process)", **_percentiles(busy_settle)},
        {"check": "admission, key with a concurrency limit (a round trip)", **_percentiles(slot_admit)},
        {"check": "settling, key with a concurrency limit (a round trip)", **_percentiles(slot_settle)},
        {"check": "any script inside Redis (mean)", "p50_ms": round(server_us / 1000, 4), "p99_ms": None},
    ]


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "API keys and rate limits",
        "p50 latency and requests/s of the same completion through one router process (gunicorn+gevent): "
        "without a key, with a key, and with a key under RPM and TPM limits (admitted from the process's "
        "blocks of the limit, reserved in Redis).",
    )
    duration = ctx.pick(5.0, 20.0)
    # A run of 2,000 requests at c=16 lasted under a second, and rounds of the
    # same configuration moved by 8 to 25% in one run: three times as many.
    counts = {1: ctx.pick(400, 3000), 16: ctx.pick(6000, 12000)}
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        stack.null_worker("null", "--tokens", str(TOKENS))
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        stack.wait_routable("null")
        calls = {
            "no auth": _call("no auth", stack.router_url, None),
            "key": _call("key", stack.router_url, _admin_key(stack, name="bench")),
            "key + RPM/TPM": _call(
                "key + RPM/TPM", stack.router_url, _admin_key(stack, name="limited", **LIMITS)
            ),
        }

        async def measure() -> None:
            for c in LEVELS:
                p50: dict[str, list[float]] = {name: [] for name in calls}
                rps: dict[str, list[float]] = {name: [] for name in calls}
                errors = 0
                for _ in range(ROUNDS):
                    for name, call in calls.items():
                        summary = (
                            await fresh_run(call, c, counts[c], duration, warmup=c, label=name)
                        ).summary()
                        result.runs.append(summary)
                        value = ms(summary, "latency_ms", "p50")
                        if value is not None:
                            p50[name].append(value)
                        rps[name].append(summary["requests_per_s"])
                        errors += summary["errors"]
                row: dict[str, Any] = {"concurrency": c, "errors": errors}
                for name in calls:
                    row[f"{name} p50_ms"] = round(statistics.median(p50[name]), 3) if p50[name] else None
                    row[f"{name} rps"] = round(statistics.median(rps[name]), 1)
                base_p50, base_rps = row["no auth p50_ms"], row["no auth rps"]
                row["added_p50_ms key"] = diff(row["key p50_ms"], base_p50)
                row["added_p50_ms key+limits"] = diff(row["key + RPM/TPM p50_ms"], base_p50)
                row["throughput_loss_pct key+limits"] = (
                    round((base_rps - row["key + RPM/TPM rps"]) / base_rps * 100, 1) if base_rps else None
                )
                result.rows.append(row)

        run_async(measure())
        checks = time_the_checks(stack.redis_url, ctx.pick(2000, 20000))
        result.notes.append(
            "Added work per request, timed alone (ms): "
            + "; ".join(f"{c['check']}: p50 {c['p50_ms']}, p99 {c['p99_ms']}" for c in checks)
            + ". A busy key is admitted from blocks of its limit the router process reserves in Redis "
            "(one round trip per block of up to 256 requests); a key with a concurrency limit costs a "
            "round trip to admit and another to settle."
        )
        hot_path_p50 = checks[0]["p50_ms"] + checks[1]["p50_ms"]

    by_c = {row["concurrency"]: row for row in result.rows}
    result.targets = [
        below("key lookup + admission (the hot path), timed alone, p50", hot_path_p50, 0.2, "ms"),
        below(
            "added p50 with a key and RPM/TPM limits, c=1", by_c[1].get("added_p50_ms key+limits"), 0.2, "ms"
        ),
        below(
            "throughput loss with a key and limits, c=16",
            by_c[16].get("throughput_loss_pct key+limits"),
            10,
            "%",
        ),
        below("errors", float(sum(row["errors"] for row in result.rows)), 1, "requests"),
    ]
    return result
