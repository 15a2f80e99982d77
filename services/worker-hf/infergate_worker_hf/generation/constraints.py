"""Constrained decoding: the tokens a sequence may take next, from a grammar.

xgrammar (the engine vLLM uses by default) compiles a JSON schema, or its
built-in JSON grammar, against the tokenizer's vocabulary once; each
constrained sequence then holds a ``GrammarMatcher`` that fills its row of a
token bitmask before sampling and advances with every accepted token.
Constrained and free sequences share a batch: only the constrained rows of
the logits are masked. Compiled grammars are kept in an LRU cache keyed by
the canonical schema text, so a schema is compiled once.

Whitespace outside strings is not allowed (compact JSON): a model cannot
stall in endless blanks.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr

from infergate_common.errors import InvalidRequest
from infergate_common.tool_calls import tool_call_schema
from infergate_common.worker_api import GenerateRequest

DEFAULT_CACHE_SIZE = 128

# The key of the built-in "any JSON object" grammar (response_format json_object).
JSON_OBJECT = "json_object"


@dataclass(frozen=True)
class ConstraintSpec:
    """What a request's output must be: ``schema`` (a JSON schema) or any
    JSON object; ``param`` names the request field it came from."""

    schema: dict[str, Any] | None
    param: str

    @property
    def key(self) -> str:
        if self.schema is None:
            return JSON_OBJECT
        return json.dumps(self.schema, sort_keys=True, separators=(",", ":"))


def constraint_for(request: GenerateRequest) -> ConstraintSpec | None:
    """A forced tool call wins over ``response_format`` (as in vLLM)."""
    schema = tool_call_schema(request)
    if schema is not None:
        return ConstraintSpec(schema, "tools")
    response_format = request.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return ConstraintSpec(None, "response_format")
    assert response_format.json_schema is not None
    return ConstraintSpec(response_format.json_schema.schema_ or {"type": "object"}, "response_format")


class GrammarCache:
    """Compiles grammars for one tokenizer, each once (LRU of compiled grammars)."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: list[int],
        max_entries: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids or None
        )
        self.vocab_size = vocab_size
        # xgrammar's own cache is off: this one is keyed and bounded by entries.
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.max_entries = max_entries
        self._grammars: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.compile_s = 0.0

    def compiled(self, spec: ConstraintSpec) -> xgr.CompiledGrammar:
        key = spec.key
        with self._lock:
            grammar = self._grammars.get(key)
            if grammar is not None:
                self._grammars.move_to_end(key)
                self.hits += 1
                return grammar
        started = time.perf_counter()
        grammar = self._compile(spec)
        elapsed = time.perf_counter() - started
        with self._lock:
            self.misses += 1
            self.compile_s += elapsed
            self._grammars[key] = grammar
            while len(self._grammars) > self.max_entries:
                self._grammars.popitem(last=False)
        return grammar

    def _compile(self, spec: ConstraintSpec) -> xgr.CompiledGrammar:
        try:
            if spec.schema is None:
                return self.compiler.compile_builtin_json_grammar()
            return self.compiler.compile_json_schema(spec.schema, any_whitespace=False, strict_mode=True)
        except Exception as exc:
            raise InvalidRequest(
                f"the JSON schema cannot be used for constrained decoding: {exc}", param=spec.param
            ) from exc

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "grammars_cached": len(self._grammars),
                "grammar_cache_hits": self.hits,
                "grammar_compiles": self.misses,
                "grammar_compile_s": round(self.compile_s, 4),
            }


class TokenConstraint:
    """The grammar state of one sequence."""

    def __init__(self, grammar: xgr.CompiledGrammar) -> None:
        self.matcher = xgr.GrammarMatcher(grammar)

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        if self.matcher.is_terminated():
            return False
        return bool(self.matcher.accept_token(token))

    @property
    def finished(self) -> bool:
        return bool(self.matcher.is_terminated())


def mask_logits(logits: torch.Tensor, constraints: list[TokenConstraint | None]) -> torch.Tensor:
    """``logits`` ``[rows, vocab]`` with the tokens each constrained row may
    not take at -inf; rows without a constraint are untouched."""
    rows = [i for i, constraint in enumerate(constraints) if constraint is not None]
    if not rows:
        return logits
    vocab = logits.shape[-1]
    bitmask = xgr.allocate_token_bitmask(len(constraints), vocab)
    for i in rows:
        constraint = constraints[i]
        assert constraint is not None
        constraint.fill(bitmask, i)
    masked = logits.float()
    if masked.device.type == "cpu":
        xgr.apply_token_bitmask_inplace(masked, bitmask, indices=rows)
    else:
        xgr.apply_token_bitmask_inplace(masked, bitmask.to(masked.device), indices=rows)
    return masked
