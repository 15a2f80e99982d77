"""Constrained decoding on worker-hf: its cost in tokens/s, and grammar
compile time.

* Throughput: 8 concurrent streaming chats against the tiny Llama, one
  worker (continuous batching), through the router: with a ``json_schema``
  ``response_format`` (every token masked by the xgrammar matcher) against
  the same chats unconstrained (``ignore_eos``). The schema asks for a long
  array so that both kinds run to the same ``max_tokens``.
* Compile time: the worker's own :class:`GrammarCache` on the tiny Llama's
  tokenizer, in this process: each schema cold (first compile), then cached.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ..client import Call
from ..context import Context, ScenarioResult, at_least, run_async
from ..loadgen import fresh_run
from ..models import ensure_test_models, worker_hf
from ..stacks import BenchStack

NAME = "structured"
STREAMS = 8

LONG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "values": {
            "type": "array",
            "items": {"type": "string", "enum": ["red", "green", "blue", "cyan"]},
            "minItems": 64,
            "maxItems": 64,
        }
    },
    "required": ["values"],
    "additionalProperties": False,
}
COMPILE_SCHEMAS: dict[str, dict[str, Any]] = {
    "long array": LONG_SCHEMA,
    "object, 5 typed fields": {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "pattern": "^[a-z ]{0,12}$"},
            "mood": {"type": "string", "enum": ["happy", "sad"]},
            "score": {"type": "integer", "minimum": 0, "maximum": 10},
            "sure": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["answer", "mood", "score", "sure", "tags"],
    },
    "tool calls (required, 2 tools)": {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "anyOf": [
                {
                    "properties": {
                        "name": {"type": "string", "enum": [name]},
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                            "required": ["city"],
                        },
                    },
                    "required": ["name", "parameters"],
                }
                for name in ("get_weather", "get_forecast")
            ],
        },
    },
}


def _compile_times(model_dir: Any) -> list[dict[str, Any]]:
    from transformers import AutoConfig, AutoTokenizer

    from infergate_worker_hf.generation.constraints import ConstraintSpec, GrammarCache

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    started = time.perf_counter()
    cache = GrammarCache(tokenizer, config.vocab_size, [tokenizer.eos_token_id])
    rows = [
        {
            "schema": "tokenizer info (once per model)",
            "cold_ms": round((time.perf_counter() - started) * 1e3, 2),
        }
    ]
    for name, schema in COMPILE_SCHEMAS.items():
        spec = ConstraintSpec(schema, "response_format")
        started = time.perf_counter()
        cache.compiled(spec)
        cold = time.perf_counter() - started
        cached = []
        for _ in range(200):
            started = time.perf_counter()
            cache.compiled(spec)
            cached.append(time.perf_counter() - started)
        rows.append(
            {
                "schema": name,
                "cold_ms": round(cold * 1e3, 2),
                "cached_us": round(statistics.median(cached) * 1e6, 1),
            }
        )
    rows.append(_mask_cost(cache, config.vocab_size))
    return rows


def _mask_cost(cache: Any, vocab_size: int) -> dict[str, Any]:
    """The per-step cost of the constraint for a batch of 8 constrained rows:
    fill each row's bitmask and mask the logits (what the scheduler adds)."""
    import torch

    from infergate_worker_hf.generation.constraints import ConstraintSpec, TokenConstraint, mask_logits

    grammar = cache.compiled(ConstraintSpec(LONG_SCHEMA, "response_format"))
    constraints: list[TokenConstraint | None] = [TokenConstraint(grammar) for _ in range(STREAMS)]
    logits = torch.randn(STREAMS, vocab_size)
    times = []
    for _ in range(200):
        started = time.perf_counter()
        mask_logits(logits.clone(), constraints)
        times.append(time.perf_counter() - started)
    return {"schema": f"mask {STREAMS} rows, one step", "cached_us": round(statistics.median(times) * 1e6, 1)}


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Constrained decoding (worker-hf, xgrammar)",
        f"Output tokens/s of {STREAMS} concurrent streaming chats on one worker-hf (tiny Llama, continuous "
        "batching) through the router, with a json_schema response_format against the same chats "
        "unconstrained; grammar compile time per schema, cold and cached.",
    )
    assert ctx.models_dir is not None
    models = ensure_test_models(ctx.models_dir)
    duration = ctx.pick(12.0, 40.0)
    tokens = ctx.pick(48, 64)
    waves = ctx.pick(3, 6)
    result.rows = _compile_times(models / "tiny-llama")
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start() as stack:
        if not stack.has_router:
            result.skipped = f"router did not start: {stack.router_error}"
            return result
        name = "structured-llama"
        threads = ["--torch_threads", str(ctx.worker_threads)]
        worker = stack.start_worker(
            name, worker_hf(name, models / "tiny-llama", "--max_num_seqs", "16", *threads)
        )
        try:
            stack.wait_routable(name)

            def chat(constrained: bool) -> Call:
                extra: dict[str, Any] = (
                    {
                        "response_format": {
                            "type": "json_schema",
                            "json_schema": {"name": "v", "schema": LONG_SCHEMA},
                        }
                    }
                    if constrained
                    else {"ignore_eos": True}
                )
                return Call(
                    f"{name} chat stream {'constrained' if constrained else 'free'}",
                    f"{stack.router_url}/openai/v1/chat/completions",
                    lambda i: {
                        "model": name,
                        "messages": [{"role": "user", "content": f"List colours {i}"}],
                        "max_tokens": tokens,
                        "temperature": 1.0,
                        "seed": i,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                        **extra,
                    },
                    mode="sse",
                )

            free = run_async(
                fresh_run(chat(False), STREAMS, STREAMS * waves, duration, warmup=STREAMS)
            ).summary()
            constrained = run_async(
                fresh_run(chat(True), STREAMS, STREAMS * waves, duration, warmup=STREAMS)
            ).summary()
        finally:
            stack.stop_worker(worker)
    result.runs += [free, constrained]
    ratio = round(constrained["tokens_per_s"] / free["tokens_per_s"], 3) if free["tokens_per_s"] else None
    result.rows += [
        {
            "case": f"unconstrained, {STREAMS} streams",
            "tokens_per_s": free["tokens_per_s"],
            "errors": free["errors"],
        },
        {
            "case": f"json_schema, {STREAMS} streams",
            "tokens_per_s": constrained["tokens_per_s"],
            "errors": constrained["errors"],
        },
    ]
    result.targets = [at_least(f"constrained / unconstrained tokens/s ({STREAMS} streams)", ratio, 0.8, "x")]
    return result
