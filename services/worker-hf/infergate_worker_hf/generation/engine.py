"""``GenerationEngine``: text generation and text2text generation behind the
worker API, over the scheduler thread that owns the model."""

from __future__ import annotations

import logging
import threading
from typing import Any

from infergate_common import worker_metrics
from infergate_common.engine import MIN_DEFAULT_CAPACITY
from infergate_common.errors import InvalidRequest, ServiceUnavailable
from infergate_common.limits import check_logit_bias_vocabulary, check_sampling
from infergate_common.stream_writer import StreamOutbox, stream_client
from infergate_common.tool_calls import DEFAULT_PARSER, check_tools, extractor_factory, parser_name_for
from infergate_common.worker_api import GenerateRequest, GenerateResponse, Task

from ..base_engine import HFEngine
from ..loading import LoadedModel
from ..settings import HFWorkerSettings
from .constraints import GrammarCache, TokenConstraint, constraint_for
from .detokenizer import TokenTexts
from .prompts import eos_token_ids, logits_width, prepare_prompt
from .runners import runner_for
from .scheduler import Scheduler
from .sequence import ChoiceState, Job, PreparedPrompt
from .sinks import Sink, StreamSink

log = logging.getLogger(__name__)

# How often a waiting HTTP thread checks that the scheduler still runs.
_WAIT_POLL_S = 1.0


class GenerationEngine(HFEngine):
    def __init__(self, settings: HFWorkerSettings, task: Task, redis_client: Any) -> None:
        super().__init__(settings, task, redis_client)
        self.scheduler: Scheduler | None = None
        self.outbox: StreamOutbox | None = None
        self.texts: TokenTexts | None = None
        self.eos_ids: frozenset[int] = frozenset()
        self._jobs: dict[str, Job] = {}
        self._jobs_lock = threading.Lock()
        self._grammars: GrammarCache | None = None
        self._grammar_lock = threading.Lock()
        self.tool_parser = DEFAULT_PARSER

    # ------------------------------------------------------------ lifecycle

    def start(self, loaded: LoadedModel) -> None:
        self.texts = TokenTexts(loaded.tokenizer)
        family = getattr(loaded.config, "model_type", None)
        try:
            self.tool_parser = parser_name_for(family, self.settings.tool_call_parser)
        except ValueError as exc:
            # A vLLM parser name reaches worker-hf when the launcher falls back to it.
            log.warning("%s; reading tool calls as the model family's format", exc)
            self.tool_parser = parser_name_for(family)
        self.eos_ids = eos_token_ids(loaded)
        self.outbox = StreamOutbox(
            stream_client(self.settings.redis_url),
            self.settings.stream_prefix,
            on_failure=self._stream_failed,
            model=self.settings.model_name,
        )
        self.scheduler = Scheduler(
            runner_for(loaded),
            self.texts,
            loaded.tokenizer,
            max_num_seqs=self.settings.max_num_seqs,
            after_iteration=self.outbox.flush,
            model=self.settings.model_name,
        )
        self.scheduler.start()
        worker_metrics.track_load(self.settings.model_name, self.scheduler.load)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.outbox is not None:
            self.outbox.close()

    def healthy(self) -> tuple[bool, str]:
        if self.scheduler is None or not self.scheduler.alive():
            return False, "generation scheduler is not running"
        return True, ""

    def active_streams(self) -> list[str]:
        # A cancelled generation is on its way out (the scheduler drops it at
        # its next step): it no longer takes a slot from a new request.
        with self._jobs_lock:
            return [
                rid
                for rid, job in self._jobs.items()
                if isinstance(job.sink, StreamSink) and not job.cancelled
            ]

    def default_capacity(self) -> int:
        # The running batch and as many again waiting, twice over: deep
        # enough to keep the batch full, short enough to answer in time.
        return max(MIN_DEFAULT_CAPACITY, 4 * self.settings.max_num_seqs)

    def extra_info(self) -> dict[str, Any]:
        scheduler = self.scheduler
        if scheduler is None:
            return {}
        return {
            "max_num_seqs": self.settings.max_num_seqs,
            "batching": scheduler.runner.description,
            "tool_call_parser": self.tool_parser,
            **scheduler.load(),
            **(self._grammars.stats() if self._grammars is not None else {}),
        }

    # ---------------------------------------------------------- generation

    def _submit(self, request: GenerateRequest, sink: Sink | None = None) -> Job:
        loaded = self.require_loaded()
        scheduler, texts = self.scheduler, self.texts
        if scheduler is None or texts is None or not scheduler.alive():
            raise ServiceUnavailable("the generation engine is not running")
        check_tools(request)
        check_sampling(request.params, self.settings)
        check_logit_bias_vocabulary(request.params.logit_bias, logits_width(loaded))
        prompt = prepare_prompt(request, loaded, self.render_chat, self.encode_text, self.eos_ids)
        self._add_constraints(request, prompt)
        with self._jobs_lock:
            if request.request_id in self._jobs:
                raise InvalidRequest(
                    f"request id {request.request_id} is already generating", param="request_id", status=409
                )
            if sink is None:
                if self.outbox is None:
                    raise ServiceUnavailable("the generation engine is not running")
                sink = StreamSink(self.outbox.open(request.request_id))
            job = Job(prompt=prompt, sink=sink)
            job.choices = [
                ChoiceState(job, index, loaded.tokenizer, texts) for index in range(prompt.params.n)
            ]
            job.listeners.append(self._forget)
            self._jobs[request.request_id] = job
        try:
            scheduler.submit(job)
        except Exception:
            self._forget(job)
            if isinstance(sink, StreamSink):
                sink.discard()
            raise
        return job

    def _add_constraints(self, request: GenerateRequest, prompt: PreparedPrompt) -> None:
        """Grammar and tool-call reading for the request's choices; the
        grammar compiles here, on the HTTP thread, not in the batch loop."""
        spec = constraint_for(request)
        if spec is not None:
            grammar = self.grammars().compiled(spec)
            prompt.new_constraint = lambda: TokenConstraint(grammar)
        prompt.new_extractor = extractor_factory(request, self.tool_parser)

    def grammars(self) -> GrammarCache:
        """The grammar compiler of this model's tokenizer, made on first use."""
        with self._grammar_lock:
            if self._grammars is None:
                loaded = self.require_loaded()
                vocab_size = getattr(loaded.config, "vocab_size", None) or len(loaded.tokenizer)
                self._grammars = GrammarCache(loaded.tokenizer, vocab_size, sorted(self.eos_ids))
            return self._grammars

    def _forget(self, job: Job) -> None:
        with self._jobs_lock:
            if self._jobs.get(job.request_id) is job:
                del self._jobs[job.request_id]
        if job.completed.is_set():
            log.info("generation finished", extra={"request_id": job.request_id, **job.summary()})

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        job = self._submit(request, Sink())
        while not job.completed.wait(_WAIT_POLL_S):
            if self.scheduler is None or not self.scheduler.alive():
                raise ServiceUnavailable("the generation engine stopped")
        if job.error is not None:
            raise job.error
        assert job.response is not None
        return job.response

    def start_stream(self, request: GenerateRequest) -> None:
        self._submit(request)

    def _stream_failed(self, request_id: str) -> None:
        """Redis refused the request's stream: nobody can read the rest."""
        log.error("token stream lost; cancelling the generation", extra={"request_id": request_id})
        self.cancel(request_id)

    def cancel(self, request_id: str) -> bool:
        with self._jobs_lock:
            job = self._jobs.get(request_id)
        if job is None or job.completed.is_set():
            return False
        job.cancelled = True
        if self.scheduler is not None:
            self.scheduler.wake()
        return True
