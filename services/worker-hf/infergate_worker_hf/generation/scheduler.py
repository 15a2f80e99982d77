"""The one thread that owns the model: admits queued jobs at token
boundaries, runs one forward pass for every running sequence, samples, and
lets finished or cancelled sequences leave at once.

At most ``max_num_seqs`` sequences run together (a job of ``n`` choices
takes ``n``); the rest wait in FIFO order. A job with more choices than
``max_num_seqs`` runs alone once the batch empties. An exception while
serving one job fails that job only; one in a shared forward pass fails the
jobs of that batch; the thread itself keeps going.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from infergate_common import worker_metrics
from infergate_common.errors import InfergateError, ServiceUnavailable
from infergate_common.worker_api import TokenLogprob, TopLogprob

from .constraints import mask_logits
from .detokenizer import IncrementalDetokenizer, TokenTexts
from .runners import BatchRunner, Prefilled
from .sampling import TokenChoice, prompt_logprobs, sample
from .sequence import ChoiceState, Job

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5


def _internal(exc: Exception) -> InfergateError:
    if isinstance(exc, InfergateError):
        return exc
    return InfergateError(f"generation failed: {type(exc).__name__}: {exc}")


class Scheduler:
    def __init__(
        self,
        runner: BatchRunner,
        texts: TokenTexts,
        tokenizer: Any,
        max_num_seqs: int,
        after_iteration: Callable[[], None] | None = None,
        model: str = "",
    ) -> None:
        self.runner = runner
        # The `model` label of the worker metrics.
        self.model = model
        # Called after every admission round and decoding step (sends the
        # stream entries they produced).
        self.after_iteration = after_iteration
        self.texts = texts
        self.tokenizer = tokenizer
        self.max_num_seqs = max_num_seqs
        self._waiting: collections.deque[Job] = collections.deque()
        self._wakeup = threading.Condition()
        self._stopped = threading.Event()
        # The running batch: one row per choice, the runner's state, and the
        # token each row feeds next.
        self.rows: list[ChoiceState] = []
        self.state: Any = None
        self.next_tokens: list[int] = []
        self.steps = 0
        # The most sequences that ever decoded together (a batching witness).
        self.peak_rows = 0
        self._thread = threading.Thread(target=self._run, name="generation-scheduler", daemon=True)

    # ----------------------------------------------------------- other threads

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    def submit(self, job: Job) -> None:
        if self._stopped.is_set():
            raise ServiceUnavailable("the generation engine is shutting down")
        with self._wakeup:
            self._waiting.append(job)
            self._wakeup.notify()

    def wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self.wake()
        self._thread.join(timeout)

    def load(self) -> dict[str, int]:
        return {"running": len(self.rows), "waiting": len(self._waiting)}

    # -------------------------------------------------------------- the loop

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stopped.is_set():
                try:
                    self._iteration()
                except Exception as exc:
                    log.exception("generation step failed")
                    self._fail_running(_internal(exc))
                self._after_iteration()
        error = ServiceUnavailable("the generation engine stopped")
        self._fail_running(error)
        with self._wakeup:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for job in waiting:
            job.fail(error)
        self._after_iteration()

    def _after_iteration(self) -> None:
        if self.after_iteration is None:
            return
        try:
            self.after_iteration()
        except Exception:
            log.exception("after-iteration hook failed")

    def _iteration(self) -> None:
        self._drop_cancelled()
        self._admit()
        self._after_iteration()
        if not self.rows:
            with self._wakeup:
                if not self._waiting and not self._stopped.is_set():
                    self._wakeup.wait(IDLE_WAIT_S)
            return
        self._decode_step()

    def _drop_cancelled(self) -> None:
        with self._wakeup:
            cancelled = [job for job in self._waiting if job.cancelled]
            for job in cancelled:
                self._waiting.remove(job)
        for job in cancelled:
            for choice in job.choices:
                choice.abort()
                job.sink.progress(choice)
            job.complete()
        if any(row.job.cancelled for row in self.rows):
            for row in self.rows:
                if row.job.cancelled and not row.finished:
                    row.abort()
                    row.job.sink.progress(row)
            self._retire()

    def _take_admissible(self) -> list[Job]:
        taken: list[Job] = []
        with self._wakeup:
            free = self.max_num_seqs - len(self.rows)
            limit = self.runner.jobs_per_prefill
            while self._waiting and (limit is None or len(taken) < limit):
                job = self._waiting[0]
                if self.rows and not self.runner.joins_running:
                    break
                # An oversized job runs alone rather than never.
                if job.n > free and (self.rows or taken):
                    break
                taken.append(self._waiting.popleft())
                free -= job.n
        return taken

    def _admit(self) -> None:
        while True:
            jobs = self._take_admissible()
            if not jobs:
                return
            admitted = time.monotonic()
            for job in jobs:
                worker_metrics.observe_queue_time(self.model, admitted - job.created)
            worker_metrics.observe_batch(self.model, "prefill", sum(job.n for job in jobs))
            try:
                prefilled = self.runner.prefill(jobs)
            except Exception as exc:
                log.exception("prefill failed")
                for job in jobs:
                    job.fail(_internal(exc))
                continue
            self._join(jobs, prefilled)

    def _join(self, jobs: list[Job], prefilled: Prefilled) -> None:
        for job, logits in zip(jobs, prefilled.prompt_logits, strict=True):
            if logits is not None:
                try:
                    job.prompt_logprobs = self._prompt_logprobs(job, logits)
                except Exception as exc:
                    log.exception("prompt logprobs failed")
                    job.fail(_internal(exc))
        rows = [choice for job in jobs for choice in job.choices]
        picks = self._sample(rows, prefilled.logits)
        self._accept(rows, picks)
        keep = [i for i, row in enumerate(rows) if not row.finished]
        self._complete_finished(jobs)
        if not keep:
            return
        state = prefilled.state
        if len(keep) < len(rows):
            state = self.runner.select(state, keep)
        self.state = self.runner.merge(self.state, state)
        self.rows.extend(rows[i] for i in keep)
        self.next_tokens.extend(picks[i].token for i in keep)
        self.peak_rows = max(self.peak_rows, len(self.rows))

    def _decode_step(self) -> None:
        worker_metrics.observe_batch(self.model, "decode", len(self.rows))
        tokens = torch.tensor(self.next_tokens, dtype=torch.long, device=self.runner.device)
        try:
            self.state, logits = self.runner.step(self.state, tokens)
        except Exception as exc:
            log.exception("decoding step failed for %d sequences", len(self.rows))
            self._fail_running(_internal(exc))
            return
        self.steps += 1
        picks = self._sample(self.rows, logits)
        self._accept(self.rows, picks)
        self.next_tokens = [pick.token for pick in picks]
        self._retire()

    # ------------------------------------------------------------- helpers

    def _sample(self, rows: list[ChoiceState], logits: torch.Tensor) -> list[TokenChoice]:
        if any(row.constraint is not None for row in rows):
            logits = mask_logits(logits, [row.constraint for row in rows])
        return sample(
            logits,
            [row.sampler for row in rows],
            [row.sampler.params.logprobs for row in rows],
        )

    def _accept(self, rows: list[ChoiceState], picks: list[TokenChoice]) -> None:
        for row, pick in zip(rows, picks, strict=True):
            if row.finished:
                continue
            try:
                row.accept(pick)
                row.job.sink.progress(row)
            except Exception as exc:
                log.exception("accepting a token failed")
                row.job.fail(_internal(exc))

    def _complete_finished(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.all_finished():
                job.complete()

    def _retire(self) -> None:
        """Drop finished rows from the batch and answer finished jobs."""
        keep = [i for i, row in enumerate(self.rows) if not row.finished]
        if len(keep) == len(self.rows):
            return
        self._complete_finished(list({id(row.job): row.job for row in self.rows}.values()))
        if not keep:
            self.rows, self.state, self.next_tokens = [], None, []
            return
        self.state = self.runner.select(self.state, keep)
        self.rows = [self.rows[i] for i in keep]
        self.next_tokens = [self.next_tokens[i] for i in keep]

    def _fail_running(self, error: InfergateError) -> None:
        jobs = {id(row.job): row.job for row in self.rows}
        self.rows, self.state, self.next_tokens = [], None, []
        for job in jobs.values():
            job.fail(error)

    def _prompt_logprobs(self, job: Job, logits: torch.Tensor) -> list[TokenLogprob]:
        ids = job.prompt.prompt_ids
        values = prompt_logprobs(logits, ids, job.prompt.params.logprobs or 0)
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        offset = 0
        entries = []
        for token, (logprob, top) in zip(ids, values, strict=True):
            entries.append(
                TokenLogprob(
                    token=self.texts.text(token),
                    logprob=logprob,
                    bytes=self.texts.bytes(token),
                    text_offset=offset,
                    top=[
                        TopLogprob(token=self.texts.text(tid), logprob=value, bytes=self.texts.bytes(tid))
                        for tid, value in top
                    ],
                )
            )
            offset += len(detokenizer.add(token))
        return entries
