"""The cost of API keys and rate limits: the same non-streaming completion
through two routers of one stack, one open (no key) and one that requires
keys, with a key without limits and a key with requests- and tokens-per-
minute limits (one Redis round trip to admit, one after the response to
settle). Runs alternate, twice each, so drift on a shared machine falls on
both sides alike."""

from __future__ import annotations

import json
import statistics
from typing import Any

from infergate_common.api_keys import digest

from ..client import Call
from ..context import Context, ScenarioResult, below, diff, ms, run_async
from ..loadgen import fresh_run
from ..stacks import BenchStack

NAME = "auth"
LEVELS = (1, 16)
PROMPT = "The quick brown fox jumps over the lazy dog"
TOKENS = 16
KEY_PLAIN = "igk-bench-plain-key"
KEY_LIMITED = "igk-bench-limited-key"
# High enough never to refuse during the run: the cost measured is the check.
LIMITS = {"rpm": 10_000_000, "tpm": 1_000_000_000}


def _call(kind: str, router_url: str, key: str | None) -> Call:
    headers = (("Authorization", f"Bearer {key}"),) if key else ()
    return Call(
        kind,
        f"{router_url}/openai/v1/completions",
        lambda i: {"model": "null", "prompt": PROMPT, "max_tokens": TOKENS},
        headers=headers,
    )


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "API keys and rate limits",
        "p50 latency and requests/s of the same completion through an open router and a router "
        "requiring keys (one process each, same stack): with a key, and with a key under RPM and "
        "TPM limits (checked in Redis).",
    )
    duration = ctx.pick(5.0, 20.0)
    counts = {1: ctx.pick(400, 3000), 16: ctx.pick(2000, 12000)}
    workdir = ctx.scenario_dir(NAME)
    keys_file = workdir / "keys.json"
    keys_file.write_text(
        json.dumps(
            {
                "keys": [
                    {"id": "plain", "key_sha256": digest(KEY_PLAIN)},
                    {"id": "limited", "key_sha256": digest(KEY_LIMITED), **LIMITS},
                ]
            }
        )
    )
    with BenchStack(workdir, log_level=ctx.log_level).start() as stack:
        stack.null_worker("null", "--tokens", str(TOKENS))
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        stack.wait_routable("null")
        keyed_url = stack.stack.start_extra_router(
            workers=1, env={"INFERGATE_API_KEYS_FILE": str(keys_file), "INFERGATE_LOG_LEVEL": ctx.log_level}
        )
        calls = {
            "no auth": _call("no auth", stack.router_url, None),
            "key": _call("key", keyed_url, KEY_PLAIN),
            "key + RPM/TPM": _call("key + RPM/TPM", keyed_url, KEY_LIMITED),
        }

        async def measure() -> None:
            for c in LEVELS:
                p50: dict[str, list[float]] = {name: [] for name in calls}
                rps: dict[str, list[float]] = {name: [] for name in calls}
                errors = 0
                for _ in range(2):
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
                    row[f"{name} p50_ms"] = round(statistics.mean(p50[name]), 3) if p50[name] else None
                    row[f"{name} rps"] = round(statistics.mean(rps[name]), 1)
                base_p50, base_rps = row["no auth p50_ms"], row["no auth rps"]
                row["added_p50_ms key"] = diff(row["key p50_ms"], base_p50)
                row["added_p50_ms key+limits"] = diff(row["key + RPM/TPM p50_ms"], base_p50)
                row["throughput_loss_pct key+limits"] = (
                    round((base_rps - row["key + RPM/TPM rps"]) / base_rps * 100, 1) if base_rps else None
                )
                result.rows.append(row)

        run_async(measure())

    by_c = {row["concurrency"]: row for row in result.rows}
    result.targets = [
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
