"""Where a job's output goes: back to a waiting HTTP thread (JSON answers)
or, entry by entry, to the request's Redis stream.

Stream entries go through the shared
:class:`~infergate_common.stream_writer.StreamOutbox`: the scheduler queues
a step's entries and hands them over once per step, one thread writes them
(and heartbeats for silent streams), so the model thread never waits on
Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from infergate_common.errors import InfergateError
from infergate_common.stream_writer import OpenStream
from infergate_common.worker_api import TokenLogprob, ToolCallDelta

if TYPE_CHECKING:
    from .sequence import ChoiceState, Job


class Sink:
    """Receives a job's progress; the JSON answer needs none of it."""

    def progress(self, choice: ChoiceState) -> None:
        """A token was accepted (the choice may have finished)."""

    def done(self, job: Job) -> None:
        """Every choice finished."""

    def error(self, job: Job, error: InfergateError) -> None:
        """The job failed."""


class StreamSink(Sink):
    """One request's stream: deltas per choice, then done or error."""

    def __init__(self, stream: OpenStream) -> None:
        self.stream = stream

    def progress(self, choice: ChoiceState) -> None:
        end = choice.releasable()
        text = choice.text[choice.sent_chars : end]
        logprobs: list[TokenLogprob] | None = None
        if choice.logprobs is not None:
            logprobs = choice.unsent_logprobs
        if not choice.echo_sent:
            choice.echo_sent = True
            echo = choice.job.prompt.echo_text
            if echo is not None:
                text = echo + text
                if logprobs is not None:
                    logprobs = (choice.job.prompt_logprobs or []) + logprobs
        calls: list[ToolCallDelta] = []
        if choice.calls is not None:
            text, calls = choice.calls.feed(text, final=choice.finished)
        if not text and not calls and not choice.finished:
            choice.sent_chars = end
            return
        tokens, reason, index = choice.unsent_tokens, choice.reported_finish_reason, choice.index
        choice.sent_chars = end
        choice.unsent_tokens = 0
        choice.unsent_logprobs = []
        self.stream.delta(index, text, tokens, logprobs, reason, calls)

    def done(self, job: Job) -> None:
        reasons = {choice.index: choice.finish_reason or "abort" for choice in job.choices}
        self.stream.done(reasons, job.usage())

    def error(self, job: Job, error: InfergateError) -> None:
        self.stream.error(error.message, status=error.status, type=error.type)

    def discard(self) -> None:
        """The job never started: no heartbeats for it."""
        self.stream.outbox.release(self.stream)
