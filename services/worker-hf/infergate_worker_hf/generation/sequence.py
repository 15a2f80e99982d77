"""The state of one request (a job) and of each of its choices while they
generate: tokens, text, stop strings, log probabilities, finish reason."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infergate_common.errors import InfergateError
from infergate_common.tool_calls import CallExtractor, extract_all
from infergate_common.worker_api import (
    FinishReason,
    GenerateChoice,
    GenerateResponse,
    SamplingParams,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Usage,
)

from .detokenizer import IncrementalDetokenizer, TokenTexts
from .sampling import RowSampler, TokenChoice, choice_generator
from .stop import StopStrings

if TYPE_CHECKING:
    from .constraints import TokenConstraint
    from .sinks import Sink


@dataclass
class PreparedPrompt:
    """A validated request, ready for the scheduler."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    # The text echoed before each completion (None: no echo).
    echo_text: str | None
    eos_ids: frozenset[int]
    # Constrained decoding: a fresh grammar state per choice (None: free text).
    new_constraint: Callable[[], TokenConstraint] | None = None
    # Tool calls: a fresh extractor per choice (None: the text is all content).
    new_extractor: Callable[[], CallExtractor] | None = None


class ChoiceState:
    """One sequence of the batch: a choice of a request."""

    def __init__(self, job: Job, index: int, tokenizer: Any, texts: TokenTexts) -> None:
        self.job = job
        self.index = index
        self.texts = texts
        params = job.prompt.params
        self.sampler = RowSampler(params, choice_generator(params.seed, index))
        self.detokenizer = IncrementalDetokenizer(tokenizer, job.prompt.prompt_ids)
        self.stops = StopStrings(params.stop)
        self.tokens: list[int] = []
        self.text = ""
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.finish_reason: FinishReason | None = None
        # Stream bookkeeping: text already sent, tokens and logprobs not yet sent.
        self.sent_chars = 0
        self.unsent_tokens = 0
        self.unsent_logprobs: list[TokenLogprob] = []
        self.echo_sent = False
        self.constraint = job.prompt.new_constraint() if job.prompt.new_constraint else None
        # The stream's extractor; JSON answers read the whole text with a fresh one.
        self.calls = job.prompt.new_extractor() if job.prompt.new_extractor else None

    @property
    def reported_finish_reason(self) -> FinishReason | None:
        """ "tool_calls" when a choice that stopped made calls."""
        if self.finish_reason == "stop" and self.calls is not None and self.calls.calls():
            return "tool_calls"
        return self.finish_reason

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def echo_len(self) -> int:
        return len(self.job.prompt.echo_text or "")

    def _logprob_entry(self, picked: TokenChoice, offset: int) -> TokenLogprob:
        return TokenLogprob(
            token=self.texts.text(picked.token),
            logprob=picked.logprob,
            bytes=self.texts.bytes(picked.token),
            text_offset=self.echo_len + offset,
            top=[
                TopLogprob(token=self.texts.text(tid), logprob=value, bytes=self.texts.bytes(tid))
                for tid, value in picked.top
            ],
        )

    def accept(self, picked: TokenChoice) -> None:
        """Add a generated token; may finish the choice."""
        prompt = self.job.prompt
        token = picked.token
        offset_before = len(self.text)
        self.tokens.append(token)
        self.unsent_tokens += 1
        if self.job.first_token_at is None:
            self.job.first_token_at = time.monotonic()
        if self.logprobs is not None:
            entry = self._logprob_entry(picked, offset_before)
            self.logprobs.append(entry)
            self.unsent_logprobs.append(entry)
        if self.constraint is not None and not self.constraint.accept(token):
            # Only a token the grammar allowed was sampled: the grammar is complete.
            self._finish("stop")
            return
        if token in prompt.eos_ids and not prompt.params.ignore_eos:
            self._finish("stop")
            return
        self._add_text(self.detokenizer.add(token))
        if self.finished:
            return
        # max_tokens was checked against the context length at admission.
        if len(self.tokens) >= prompt.max_tokens:
            self._finish("length")

    def _add_text(self, new_text: str) -> None:
        if not new_text:
            return
        searched = len(self.text)
        self.text += new_text
        at = self.stops.find(self.text, searched)
        if at is not None:
            self.text = self.text[:at]
            self.finish_reason = "stop"

    def _finish(self, reason: FinishReason) -> None:
        self._add_text(self.detokenizer.flush())
        if self.finish_reason is None:
            self.finish_reason = reason

    def abort(self) -> None:
        if not self.finished:
            self._finish("abort")

    def releasable(self) -> int:
        """How much of the text a stream may send now."""
        if self.finished:
            return len(self.text)
        return len(self.text) - self.stops.held_back(self.text)

    def choice(self) -> GenerateChoice:
        text = self.text
        reason: FinishReason = self.finish_reason or "abort"
        tool_calls: list[ToolCall] | None = None
        if self.job.prompt.new_extractor is not None:
            text, tool_calls = extract_all(self.job.prompt.new_extractor(), self.text)
            if tool_calls and reason == "stop":
                reason = "tool_calls"
        return GenerateChoice(
            index=self.index,
            text=(self.job.prompt.echo_text or "") + text,
            finish_reason=reason,
            completion_tokens=len(self.tokens),
            logprobs=(self.job.prompt_logprobs or []) + self.logprobs if self.logprobs is not None else None,
            tool_calls=tool_calls or None,
        )


@dataclass
class Job:
    """A request from admission to its last token."""

    prompt: PreparedPrompt
    sink: Sink
    choices: list[ChoiceState] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    cancelled: bool = False
    completed: threading.Event = field(default_factory=threading.Event)
    error: InfergateError | None = None
    response: GenerateResponse | None = None
    created: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    # Called once the job answered (done or error).
    listeners: list[Callable[[Job], None]] = field(default_factory=list)

    @property
    def request_id(self) -> str:
        return self.prompt.request_id

    @property
    def n(self) -> int:
        return self.prompt.params.n

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.prompt.echo_text is not None and self.prompt.params.logprobs is not None

    def usage(self) -> Usage:
        prompt_tokens = len(self.prompt.prompt_ids)
        completion = sum(len(choice.tokens) for choice in self.choices)
        return Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
        )

    def summary(self) -> dict[str, Any]:
        """Token figures for the log: counts, time to first token, rate."""
        elapsed = time.monotonic() - self.created
        usage = self.usage()
        first = self.first_token_at
        return {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "finish_reasons": [choice.finish_reason for choice in self.choices],
            "ttft_ms": round((first - self.created) * 1000, 1) if first is not None else None,
            "duration_ms": round(elapsed * 1000, 1),
            "tokens_per_s": round(usage.completion_tokens / elapsed, 1) if elapsed > 0 else None,
        }

    def all_finished(self) -> bool:
        return bool(self.choices) and all(choice.finished for choice in self.choices)

    def complete(self) -> None:
        """Every choice finished: answer."""
        if self.completed.is_set():
            return
        self.response = GenerateResponse(
            request_id=self.request_id,
            choices=[choice.choice() for choice in self.choices],
            usage=self.usage(),
        )
        self.sink.done(self)
        self._answered()

    def fail(self, error: InfergateError) -> None:
        if self.completed.is_set():
            return
        self.error = error
        for choice in self.choices:
            if not choice.finished:
                choice.finish_reason = "error"
        self.sink.error(self, error)
        self._answered()

    def _answered(self) -> None:
        self.completed.set()
        for listener in self.listeners:
            listener(self)
