"""The workers' batching gains (issue 6), through the router.

* Encoders: 32 concurrent clients sending one sentence each (KServe v1
  predict) to worker-hf serving the MiniLM-sized classifier, with
  ``--max_batch_size 32`` against ``--max_batch_size 1``; one client at a
  time as a reference.
* Generation: 8 concurrent streams (OpenAI completions, ``ignore_eos``)
  against the tiny Llama, ``--max_num_seqs 16`` against ``--max_num_seqs 1``
  (which serves them one at a time).

Each worker runs alone (the other is stopped), with ``--worker_threads``
torch threads (2 by default: the machine's cores, as in issue 6's KServe
reference; the router and the load generator share them).

In the same run, two references for the encoder: the bare forward-pass
ceiling (batches of 32 on the same thread count, no server:
``bench/forward_ceiling.py`` in its own process) and one client straight to
the worker's ``/encode`` (what the router adds to one client). The one
client through the router and the one straight to the worker run in short
alternating rounds, each side's latencies pooled over its rounds: the
forward pass (about 20 ms) varies by more than the router adds from one
run to the next, and a machine that speeds up or slows down during the
rounds weighs on both sides alike.

The 32 clients with batching on and the bare forward pass alternate too:
``CEILING_ROUNDS`` slices of each, the order swapped every round, each
side's rate over all its slices. Measured once, minutes apart, the
ceiling moved by 20% between runs on the same machine (194 to 233 rows/s),
and that drift fell on the ratio. The forward pass runs in one long-lived
process, as the worker does, warmed up before its first slice: run as a new
process per slice, its first slice was the slowest by a fifth to a third in
every run, since a new process's first seconds of compute sometimes ran at
half speed on the machines measured here."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from ..client import Call
from ..context import Context, ScenarioResult, at_least, below, diff, ms, run_async
from ..loadgen import fresh_run
from ..models import ensure_test_models, worker_hf
from ..profiling import py_spy_record
from ..records import RunResult
from ..stacks import BenchStack

NAME = "batching"

TEXT = (
    "the service answered every request quickly while the cluster scaled out under heavy "
    "load and the operators watched latency graphs with growing confidence in the platform"
)
WORDS = TEXT.split(" ")


def sentence(i: int) -> str:
    """A 16-word sentence that differs per request (so nothing is cached)."""
    start = i % len(WORDS)
    return " ".join((WORDS[start:] + WORDS[:start])[:16])


def _row(case: str, summary: dict[str, Any], unit: str, value_key: str) -> dict[str, Any]:
    return {
        "case": case,
        "concurrency": summary["concurrency"],
        "throughput": summary[value_key],
        "unit": unit,
        "p50_ms": ms(summary, "latency_ms", "p50"),
        "p99_ms": ms(summary, "latency_ms", "p99"),
        "ttft_p50_ms": ms(summary, "ttft_ms", "p50"),
        "itl_p50_ms": ms(summary, "itl_ms", "p50"),
        "requests": summary["requests"],
        "errors": summary["errors"],
    }


def pooled(label: str, runs: list[RunResult]) -> RunResult:
    """Several runs of one call as one (their records and wall time)."""
    records = [record for run in runs for record in run.records]
    return RunResult(label, runs[0].concurrency, sum(run.wall_s for run in runs), records)


# Slices of the bare forward pass alternated with slices of the 32 clients.
CEILING_ROUNDS = 3


class ForwardCeiling:
    """The bare forward pass at batch 32 in a long-lived process of its own
    (``bench/forward_ceiling.py --slices``), measured a slice at a time."""

    def __init__(self, model_dir: Any, threads: int, log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.forward_ceiling", "--model", str(model_dir), "--batch", "32",
                 "--threads", str(threads), "--slices"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
        self._answer("ready")

    def slice(self, seconds: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{seconds}\n")
        self.process.stdin.flush()
        return dict(json.loads(self._answer()))

    def _answer(self, expected: str | None = None) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line or (expected is not None and line != expected):
            raise RuntimeError(f"forward_ceiling answered {line!r}; see {self.log}")
        return line

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def pooled_ceiling(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """Slices of the bare forward pass as one: rows over their summed time."""
    batches = sum(int(one["batches"]) for one in slices)
    wall_s = sum(float(one["wall_s"]) for one in slices)
    return {
        "batch": slices[0]["batch"],
        "batches": batches,
        "rows_per_s": round(batches * slices[0]["batch"] / wall_s, 1),
        "ms_per_batch": round(1000 * wall_s / batches, 3),
        "slices_rows_per_s": [one["rows_per_s"] for one in slices],
    }


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Worker batching gains",
        "Encoder requests/s with 32 concurrent clients, micro-batching on (max_batch_size 32) vs "
        "off (1), MiniLM-sized classifier (6 layers, hidden 384) through the router (v1 predict); "
        "generation tokens/s with 8 concurrent streams, continuous batching on (max_num_seqs 16) "
        "vs one sequence at a time (1), tiny Llama, through the router (OpenAI streaming).",
    )
    assert ctx.models_dir is not None
    models = ensure_test_models(ctx.models_dir)
    duration = ctx.pick(12.0, 40.0)
    gen_tokens = ctx.pick(32, 64)
    gen_waves = ctx.pick(2, 5)
    one_client_rounds_n = ctx.pick(8, 16)
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result

        ceiling_slices: list[dict[str, Any]] = []
        served_slices: list[RunResult] = []

        def serve(
            name: str,
            model: str,
            flags: list[str],
            calls: Callable[[str], list[tuple[Call, int, int]]],
            with_ceiling: bool = False,
        ) -> list[dict[str, Any]]:
            threads = ["--torch_threads", str(ctx.worker_threads)]
            worker = stack.start_worker(name, worker_hf(name, models / model, *flags, *threads))
            try:
                stack.wait_routable(name)
                planned = calls(name)
                out = [
                    alternate_with_ceiling(call, c, count)
                    if with_ceiling
                    else run_async(fresh_run(call, c, count, duration, warmup=c)).summary()
                    for call, c, count in planned
                    if c > 1
                ]
                one = [(call, count) for call, c, count in planned if c == 1]
                if one:  # one client: in alternating rounds
                    out += one_client_rounds(one)
                if ctx.profile:
                    call, c, count = planned[0]
                    with py_spy_record(worker.process.pid, ctx.profile_path(NAME, name)) as info:
                        run_async(fresh_run(call, c, count, duration / 2))
                    result.profiles[name] = info
                return out
            finally:
                stack.stop_worker(worker)

        def alternate_with_ceiling(call: Call, c: int, count: int) -> dict[str, Any]:
            """``call`` at ``c`` clients in slices alternated with slices of the
            bare forward pass; each side's slices kept (``served_slices``,
            ``ceiling_slices``) for the notes; one summary."""
            log = ctx.scenario_dir(NAME) / "forward_ceiling.log"
            bare_model = ForwardCeiling(models / "minilm-classifier", ctx.worker_threads, log)

            def served() -> None:
                served_slices.append(
                    run_async(fresh_run(call, c, count, duration / CEILING_ROUNDS, warmup=c))
                )

            def bare() -> None:
                ceiling_slices.append(bare_model.slice(ceiling_s / CEILING_ROUNDS))

            try:
                for r in range(CEILING_ROUNDS):
                    for step in (served, bare) if r % 2 == 0 else (bare, served):
                        step()
            finally:
                bare_model.close()
            return pooled(call.kind, served_slices).summary()

        def one_client_rounds(calls: list[tuple[Call, int]]) -> list[dict[str, Any]]:
            """``calls`` one client at a time, in alternating rounds; one
            summary per call over all its rounds."""
            rounds: list[list[RunResult]] = [[] for _ in calls]
            for call, count in calls:  # warm each (connections, caches)
                run_async(fresh_run(call, 1, count, 1.0))
            for r in range(one_client_rounds_n):
                order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))
                for i in order:
                    call, count = calls[i]
                    rounds[i].append(run_async(fresh_run(call, 1, count, duration / one_client_rounds_n * 2)))
            return [pooled(call.kind, runs).summary() for (call, _), runs in zip(calls, rounds, strict=True)]

        def encode_calls(name: str, levels: tuple[int, ...]) -> list[tuple[Call, int, int]]:
            call = Call(
                f"{name} v1 predict",
                f"{stack.router_url}/v1/models/{name}:predict",
                lambda i: {"instances": [sentence(i)]},
            )
            out = [(call, c, 100_000) for c in levels]
            if 1 in levels:
                direct = Call(
                    f"{name} worker /encode",
                    f"{replica_url(name)}/encode",
                    lambda i: {"request_id": f"bench-{i}-{uuid.uuid4().hex[:8]}", "inputs": [sentence(i)]},
                )
                out.append((direct, 1, 100_000))
            return out

        def replica_url(name: str) -> str:
            record = requests.get(f"{stack.stack.registry_url}/registry/models/{name}", timeout=5).json()
            return str(record["replicas"][0]["url"])

        def gen_calls(name: str, levels: tuple[int, ...]) -> list[tuple[Call, int, int]]:
            call = Call(
                f"{name} completions stream",
                f"{stack.router_url}/openai/v1/completions",
                lambda i: {
                    "model": name,
                    "prompt": sentence(i),
                    "max_tokens": gen_tokens,
                    "ignore_eos": True,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
                mode="sse",
            )
            return [(call, c, c * gen_waves) for c in levels]

        ceiling_s = ctx.pick(6.0, 15.0)
        on32 = serve(
            "enc-batch32",
            "minilm-classifier",
            ["--max_batch_size", "32"],
            lambda n: encode_calls(n, (32, 1)),
            with_ceiling=True,
        )
        ceiling = pooled_ceiling(ceiling_slices)
        off = serve(
            "enc-batch1", "minilm-classifier", ["--max_batch_size", "1"], lambda n: encode_calls(n, (32,))
        )
        gen_on = serve("gen-seqs16", "tiny-llama", ["--max_num_seqs", "16"], lambda n: gen_calls(n, (8, 1)))
        gen_off = serve("gen-seqs1", "tiny-llama", ["--max_num_seqs", "1"], lambda n: gen_calls(n, (8,)))

    result.runs += on32 + off + gen_on + gen_off
    rows = [
        _row("encoder batch 32, 32 clients", on32[0], "requests/s", "requests_per_s"),
        _row("encoder batch 1, 32 clients", off[0], "requests/s", "requests_per_s"),
        _row("encoder batch 32, 1 client", on32[1], "requests/s", "requests_per_s"),
        {
            "case": "bare forward pass, batch 32, no server",
            "concurrency": 32,
            "throughput": ceiling["rows_per_s"],
            "unit": "rows/s",
            "p50_ms": ceiling["ms_per_batch"],
        },
        _row("encoder batch 32, 1 client, worker /encode alone", on32[2], "requests/s", "requests_per_s"),
        _row("generation seqs 16, 8 streams", gen_on[0], "tokens/s", "tokens_per_s"),
        _row("generation seqs 1, 8 streams", gen_off[0], "tokens/s", "tokens_per_s"),
        _row("generation seqs 16, 1 stream", gen_on[1], "tokens/s", "tokens_per_s"),
    ]
    result.rows = rows

    def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
        return round(a["throughput"] / b["throughput"], 2) if b["throughput"] else None

    added_one = diff(rows[2]["p50_ms"], rows[4]["p50_ms"])
    result.targets = [
        below("encoder, 1 client: router p50 minus worker alone", added_one, 0.5, "ms"),
        at_least(
            "encoder, 32 clients through the router / bare forward pass", ratio(rows[0], rows[3]), 0.8, "x"
        ),
        at_least("encoder throughput, batching on/off (32 clients)", ratio(rows[0], rows[1]), 4, "x"),
        at_least("generation tokens/s, 8 streams batched / one at a time", ratio(rows[5], rows[6]), 4, "x"),
    ]
    result.notes.append(
        f"The bare forward pass and the 32 clients with batching on ran in {CEILING_ROUNDS} alternated "
        f"slices each; the forward pass's slices gave {ceiling['slices_rows_per_s']} rows/s, the 32 "
        f"clients' {[round(one.summary()['requests_per_s'], 1) for one in served_slices]} requests/s."
    )
    result.notes.append(
        "For scale (issue 6): KServe 0.13's Hugging Face server answers about 80 requests/s on 2 cores "
        "with 32 concurrent clients on a MiniLM-sized classifier (76/s with one client)."
    )
    return result
