"""vLLM's ``AsyncLLM`` behind the internal worker API.

The engine runs on an asyncio loop in a thread of its own
(:class:`BackgroundLoop`); the worker API's threads hand it coroutines.
Deltas of streaming requests go to Redis in batches through the shared
:class:`~infergate_common.stream_writer.AsyncStreamOutbox` (which also writes
the heartbeats), so the engine's loop never waits on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infergate_common.engine import MIN_DEFAULT_CAPACITY, Engine
from infergate_common.errors import (
    InfergateError,
    InvalidRequest,
    ServiceUnavailable,
)
from infergate_common.limits import check_logit_bias_vocabulary, check_sampling
from infergate_common.stream_writer import AsyncStreamOutbox, OpenStream, async_stream_client
from infergate_common.tool_calls import CallExtractor, check_tools, extract_all, forces_tool_call
from infergate_common.worker_api import (
    Backend,
    DetokenizeRequest,
    DetokenizeResponse,
    FinishReason,
    GenerateChoice,
    GenerateRequest,
    GenerateResponse,
    SamplingParams,
    Task,
    TokenizeRequest,
    TokenizeResponse,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
    WorkerInfo,
)

from .backend_choice import BackendChoice
from .background_loop import BackgroundLoop
from .logprobs import LogprobMapper
from .prompts import RenderedPrompt, check_token_ids, has_chat_template, render_chat, render_prompt
from .sampling import completion_budget, finish_reason, to_vllm
from .settings import VllmWorkerSettings
from .tools import (
    VllmParserExtractor,
    check_structured_outputs,
    extractor_factory,
    parser_name,
    structured_outputs,
    vllm_chat_request,
    whole_text_calls,
)

log = logging.getLogger(__name__)

# How often the loop checks the engine's health and the streams' silence.
WATCH_INTERVAL_S = 0.25
ENGINE_DEAD = "the vLLM engine died"

Emit = Callable[
    [int, str, int, list[TokenLogprob] | None, FinishReason | None, list[ToolCallDelta] | None], None
]


@dataclass
class _Job:
    request_id: str
    params: SamplingParams
    prompt: RenderedPrompt
    sampling: Any
    echo: bool
    stream: bool = False
    forced: bool = False
    # Tool calls: vLLM's request for its parsers, and how each choice is read.
    chat_request: Any = None
    new_extractor: Callable[[], CallExtractor] | None = None


@dataclass
class _Choice:
    mapper: LogprobMapper
    calls: CallExtractor | None = None
    echoed: bool = False
    tokens: int = 0
    finish: FinishReason | None = None
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


def _json_safe(value: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(value, default=str)))


class VllmEngine(Engine):
    def __init__(
        self,
        settings: VllmWorkerSettings,
        engine_args: Any,
        choice: BackendChoice,
        architecture: str | None,
        device: str,
    ) -> None:
        self.settings = settings
        self.engine_args = engine_args
        self.choice = choice
        self.architecture = architecture
        self.device = device
        # Why a GPU given to the pod is unusable ('' when none or usable): in /info.
        self.gpu_unusable = ""
        self.loop = BackgroundLoop("vllm-asyncio")
        self.outbox: AsyncStreamOutbox | None = None
        self.llm: Any = None
        self.tokenizer: Any = None
        self.tool_parser = ""
        self.tool_parser_cls: Any = None
        self.max_model_len: int | None = engine_args.max_model_len
        self.max_logprobs = 20
        self.dtype = str(engine_args.dtype)
        self._loaded = threading.Event()
        self._dead: str | None = None
        self._stopping = False
        # Rust tokenizers refuse concurrent use from several threads.
        self._tokenizer_lock = threading.Lock()
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._cancelled: set[str] = set()
        # Cancelled requests the engine has not been told of yet (one abort for all).
        self._abort_pending: set[str] = set()
        # The streamed ones among the active requests (they outlive their /generate call).
        self._stream_ids: set[str] = set()
        # Touched only on the engine's loop.
        self._streams: dict[str, OpenStream] = {}

    # ------------------------------------------------------------ lifecycle

    def load(self) -> None:
        from transformers import AutoTokenizer

        self.loop.start()
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.settings.model_path(),
            revision=self.settings.tokenizer_revision or self.settings.model_revision,
            trust_remote_code=self.settings.trust_remote_code,
        )
        self.llm = self.loop.run(self._start_engine())
        self.loop.run(self._start_outbox())
        model_config = self.llm.model_config
        self.max_model_len = int(model_config.max_model_len)
        self.max_logprobs = int(model_config.max_logprobs)
        self.dtype = str(model_config.dtype).removeprefix("torch.")
        self._load_tool_parser(getattr(model_config.hf_config, "model_type", None))
        self.loop.submit(self._watch())
        self._loaded.set()
        log.info(
            "vLLM engine ready",
            extra={"max_model_len": self.max_model_len, "dtype": self.dtype, "device": self.device},
        )

    def _load_tool_parser(self, model_type: str | None) -> None:
        from vllm.tool_parsers import ToolParserManager

        self.tool_parser = parser_name(model_type, self.settings.tool_call_parser)
        self.tool_parser_cls = ToolParserManager.get_tool_parser(self.tool_parser)

    async def _start_engine(self) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        from .metrics import stat_logger_factories

        # Only the Prometheus loggers: vLLM's periodic throughput log line stays off (disable_log_stats).
        return AsyncLLM.from_engine_args(
            self.engine_args, stat_loggers=stat_logger_factories(self.settings.model_name)
        )

    async def _start_outbox(self) -> None:
        self.outbox = AsyncStreamOutbox(
            async_stream_client(self.settings.redis_url),
            self.settings.stream_prefix,
            on_failure=self._stream_failed,
            model=self.settings.model_name,
        )
        self.outbox.start()

    def _stream_failed(self, request_id: str) -> None:
        """Redis refused the request's stream (called on the loop): nobody
        can read the rest, so the engine stops generating it."""
        log.error("token stream lost; aborting the generation", extra={"request_id": request_id})
        self.cancel(request_id)

    def ready(self) -> tuple[bool, str]:
        if self._dead is not None:
            return False, self._dead
        if not self._loaded.is_set():
            return False, "loading the vLLM engine"
        if self.llm.errored:
            return False, ENGINE_DEAD
        return True, ""

    def shutdown(self) -> None:
        self._stopping = True
        if self._loaded.is_set():
            with contextlib.suppress(Exception):
                self.loop.run(self._close_streams(), timeout=3)
        if self.llm is not None:
            try:
                self.llm.shutdown()
            except Exception:
                log.exception("vLLM engine shutdown failed")
        self.loop.stop()

    async def _close_streams(self) -> None:
        await self._fail_open_streams("the worker is shutting down", 503)
        if self.outbox is not None:
            await self.outbox.drain()
            await self.outbox.close()

    def info(self) -> WorkerInfo:
        chat = self.tokenizer is not None and has_chat_template(self.tokenizer)
        extra: dict[str, Any] = {
            "engine_flags": _json_safe(self.settings.engine_flags),
            "tensor_parallel_size": self.engine_args.tensor_parallel_size,
            "tool_call_parser": self.tool_parser,
        }
        if self._loaded.is_set():
            extra["unfinished_requests"] = self.llm.get_num_unfinished_requests()
        if self.gpu_unusable:
            extra["gpu_unusable"] = self.gpu_unusable
        return WorkerInfo(
            name=self.settings.model_name,
            model_id=self.settings.model_path(),
            revision=self.settings.model_revision,
            task=Task.TEXT_GENERATION,
            backend=Backend.VLLM,
            backend_reason=self.choice.reason,
            architecture=self.architecture,
            dtype=self.dtype,
            device=self.device,
            max_model_len=self.max_model_len,
            chat_template=chat,
            encoder_decoder=False,
            extra=extra,
        )

    # ------------------------------------------------------------ tokenizer

    def _require_loaded(self) -> None:
        ok, reason = self.ready()
        if not ok:
            raise ServiceUnavailable(f"model not ready: {reason}")

    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self._require_loaded()
        with self._tokenizer_lock:
            if request.messages is not None:
                text = render_chat(self.tokenizer, request.messages, self.settings.model_name)
                tokens = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                tokens = list(
                    self.tokenizer(request.prompt or "", add_special_tokens=request.add_special_tokens)[
                        "input_ids"
                    ]
                )
        return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=self.max_model_len)

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self._require_loaded()
        with self._tokenizer_lock:
            check_token_ids(self.tokenizer, request.tokens, "tokens")
            return DetokenizeResponse(prompt=self.tokenizer.decode(request.tokens))

    def _decode_one(self, token_id: int) -> str:
        with self._tokenizer_lock:
            return str(self.tokenizer.decode([token_id]))

    # ------------------------------------------------------------ generation

    def _prepare(self, request: GenerateRequest) -> _Job:
        self._require_loaded()
        check_tools(request)
        params = request.params
        check_sampling(params, self.settings)
        check_logit_bias_vocabulary(params.logit_bias, int(self.llm.model_config.get_vocab_size()))
        # Echo is a completions feature; a chat returns only the answer.
        echo = params.echo and request.messages is None
        with self._tokenizer_lock:
            prompt = render_prompt(
                self.tokenizer,
                request.prompt,
                request.messages,
                self.settings.model_name,
                want_offsets=echo and params.logprobs is not None,
                tools=request.tools,
                tools_required=request.effective_tool_choice == "auto",
            )
        assert self.max_model_len is not None
        max_tokens = completion_budget(params, len(prompt.token_ids), self.max_model_len)
        sampling = to_vllm(params, max_tokens, self.max_logprobs)
        chat_request = vllm_chat_request(request) if request.tools else None
        constraint = structured_outputs(request, chat_request)
        if constraint is not None:
            sampling.structured_outputs = constraint
            check_structured_outputs(
                self.llm, sampling, "tools" if forces_tool_call(request) else "response_format"
            )
        new_extractor = extractor_factory(request, self.tool_parser_cls, self.tokenizer, chat_request)
        with self._lock:
            if request.request_id in self._active:
                raise InvalidRequest(
                    f"request id {request.request_id} is already in flight", param="request_id", status=409
                )
            self._active.add(request.request_id)
        return _Job(
            request.request_id,
            params,
            prompt,
            sampling,
            echo,
            stream=request.stream,
            forced=forces_tool_call(request),
            chat_request=chat_request,
            new_extractor=new_extractor,
        )

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        job = self._prepare(request)
        try:
            future = self.loop.submit(self._complete(job))
        except Exception:
            self._release(job.request_id)
            raise
        return future.result()

    def active_streams(self) -> list[str]:
        with self._lock:
            return list(self._stream_ids)

    def default_capacity(self) -> int:
        # vLLM's scheduler keeps its own waiting queue: admit a second batch's worth.
        return max(MIN_DEFAULT_CAPACITY, 2 * int(getattr(self.engine_args, "max_num_seqs", None) or 256))

    def start_stream(self, request: GenerateRequest) -> None:
        job = self._prepare(request)
        with self._lock:
            self._stream_ids.add(request.request_id)
        try:
            self.loop.submit(self._stream(job))
        except Exception:
            self._release(job.request_id)
            raise

    def cancel(self, request_id: str) -> bool:
        """Mark the request cancelled and have the loop abort it; returns at
        once. Cancels that arrive together (a storm of abandoned streams)
        go to the engine as one abort: a cancel that waited for its own
        abort on a busy loop held a request thread for seconds, and 200 of
        them held every thread the next request needed."""
        with self._lock:
            if request_id not in self._active:
                return False
            self._cancelled.add(request_id)
            # A non-empty set has its abort scheduled already.
            schedule = not self._abort_pending
            self._abort_pending.add(request_id)
        if schedule:
            if self._loaded.is_set() and not self.llm.errored:
                self.loop.submit(self._abort_pending_requests())
            else:
                with self._lock:
                    self._abort_pending.clear()
        return True

    async def _abort_pending_requests(self) -> None:
        with self._lock:
            pending, self._abort_pending = self._abort_pending, set()
        if pending and not self.llm.errored:
            await self.llm.abort(list(pending))

    def _release(self, request_id: str) -> None:
        with self._lock:
            self._active.discard(request_id)
            self._cancelled.discard(request_id)
            self._stream_ids.discard(request_id)

    async def _complete(self, job: _Job) -> GenerateResponse:
        choices: dict[int, _Choice] = {}

        def collect(
            index: int,
            text: str,
            tokens: int,
            logprobs: list[TokenLogprob] | None,
            finish: FinishReason | None,
            tool_calls: list[ToolCallDelta] | None,
        ) -> None:
            choice = choices.setdefault(index, _Choice(LogprobMapper(0, self._decode_one)))
            choice.parts.append(text)
            if logprobs:
                choice.logprobs.extend(logprobs)

        finish, usage, counts = await self._drive(job, collect)
        want_logprobs = job.params.logprobs is not None
        answers = []
        for i in range(job.params.n):
            text = "".join(choices[i].parts) if i in choices else ""
            text, calls = self._read_calls(job, text)
            reason: FinishReason = "tool_calls" if calls and finish[i] == "stop" else finish[i]
            answers.append(
                GenerateChoice(
                    index=i,
                    text=text,
                    finish_reason=reason,
                    completion_tokens=counts[i],
                    logprobs=(choices[i].logprobs if i in choices else []) if want_logprobs else None,
                    tool_calls=calls or None,
                )
            )
        return GenerateResponse(request_id=job.request_id, choices=answers, usage=usage)

    def _read_calls(self, job: _Job, text: str) -> tuple[str, list[ToolCall]]:
        """A whole answer's content and calls: forced calls through the
        shared extractor, "auto" through vLLM's parser as its server does."""
        if job.new_extractor is None:
            return text, []
        if job.forced:
            return extract_all(job.new_extractor(), text)
        parser = self.tool_parser_cls(self.tokenizer, job.chat_request.tools)
        content, found = whole_text_calls(parser, job.chat_request, text)
        return content, [ToolCall(id=cid, name=name, arguments=arguments) for cid, name, arguments in found]

    async def _stream(self, job: _Job) -> None:
        assert self.outbox is not None
        stream = self.outbox.open(job.request_id)
        self._streams[job.request_id] = stream
        try:
            finish, usage, _ = await self._drive(job, stream.delta)
            stream.done(finish, usage)
        except InfergateError as exc:
            stream.error(exc.message, status=exc.status, type=exc.type)
        except Exception as exc:
            log.exception("stream failed", extra={"request_id": job.request_id})
            stream.error(f"generation failed: {type(exc).__name__}: {exc}", status=500)
        finally:
            self._streams.pop(job.request_id, None)

    async def _drive(self, job: _Job, emit: Emit) -> tuple[dict[int, FinishReason], Usage, list[int]]:
        """Run one request through the engine, calling ``emit`` per delta;
        returns the finish reason and token count of each choice and the usage."""
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        top = job.params.logprobs or 0
        read_calls = job.stream and job.new_extractor is not None
        choices = [
            _Choice(LogprobMapper(top, self._decode_one), job.new_extractor() if read_calls else None)  # type: ignore[misc]
            for _ in range(job.params.n)
        ]
        prompt_logprobs: list[Any] | None = None
        aborted = False
        try:
            if job.request_id not in self._cancelled:
                engine_input = await self._engine_input(job.prompt.token_ids)
                async for output in self.llm.generate(engine_input, job.sampling, job.request_id):
                    if job.request_id in self._cancelled and not aborted:
                        # A cancel that arrived before the engine knew the request.
                        aborted = True
                        await self.llm.abort(job.request_id)
                    if prompt_logprobs is None and output.prompt_logprobs is not None:
                        prompt_logprobs = list(output.prompt_logprobs)
                    for completion in output.outputs:
                        self._on_output(job, choices[completion.index], completion, prompt_logprobs, emit)
        except asyncio.CancelledError:
            raise
        except EngineDeadError as exc:
            raise ServiceUnavailable(ENGINE_DEAD) from exc
        except GracefulHTTPError as exc:
            raise InfergateError(exc.message, status=int(exc.http_status)) from exc
        except (VLLMClientError, ValueError) as exc:
            raise InvalidRequest(str(exc)) from exc
        except Exception as exc:
            if self.llm.errored:
                raise ServiceUnavailable(ENGINE_DEAD) from exc
            cause = exc.__cause__ or exc
            raise InfergateError(f"generation failed: {type(cause).__name__}: {cause}") from exc
        finally:
            self._release(job.request_id)
        for index, choice in enumerate(choices):
            if choice.finish is None:
                choice.finish = "abort"
                emit(index, "", 0, None, "abort", None)
        completion_tokens = sum(choice.tokens for choice in choices)
        prompt_tokens = len(job.prompt.token_ids)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        finish = {i: choice.finish or "abort" for i, choice in enumerate(choices)}
        return finish, usage, [choice.tokens for choice in choices]

    async def _engine_input(self, token_ids: list[int]) -> Any:
        """The prompt as vLLM's renderer prepares it (vLLM deprecates
        handing raw prompts to ``generate``); releases without a renderer
        take the token ids as they are."""
        prompt = {"prompt_token_ids": token_ids}
        render = getattr(getattr(self.llm, "renderer", None), "render_cmpl_async", None)
        if render is None:
            return prompt
        (engine_input,) = await render([prompt])
        return engine_input

    def _on_output(
        self,
        job: _Job,
        choice: _Choice,
        completion: Any,
        prompt_logprobs: list[Any] | None,
        emit: Emit,
    ) -> None:
        text = completion.text
        token_ids = list(completion.token_ids)
        want_logprobs = job.params.logprobs is not None
        logprobs: list[TokenLogprob] | None = [] if want_logprobs else None
        if job.echo and not choice.echoed:
            choice.echoed = True
            text = job.prompt.text + text
            if logprobs is not None:
                logprobs.extend(
                    choice.mapper.many(job.prompt.token_ids, prompt_logprobs or [], job.prompt.offsets)
                )
            choice.mapper.next_offset = len(job.prompt.text)
        if logprobs is not None and completion.logprobs is not None:
            logprobs.extend(choice.mapper.many(token_ids, list(completion.logprobs)))
        finish = finish_reason(completion.finish_reason)
        choice.tokens += len(token_ids)
        calls: list[ToolCallDelta] = []
        if choice.calls is not None:
            if isinstance(choice.calls, VllmParserExtractor):
                choice.calls.tokens(token_ids)
            text, calls = choice.calls.feed(text, final=finish is not None)
            if finish == "stop" and choice.calls.calls():
                finish = "tool_calls"
        if finish is not None:
            choice.finish = finish
        if not text and not token_ids and finish is None and not calls:
            return
        emit(completion.index, text, len(token_ids), logprobs or None, finish, calls)

    # ------------------------------------------------------------ streams

    async def _fail_open_streams(self, message: str, status: int) -> None:
        for stream in list(self._streams.values()):
            stream.error(message, status=status, type=ServiceUnavailable.type)

    def _exit_later(self) -> None:
        """A dead engine does not come back (vLLM's own server exits too):
        stop the worker after a grace period (streams get their error,
        ``/readyz`` says why) so its supervisor starts a fresh one."""
        delay = self.settings.exit_after_engine_death_s
        if delay is None:
            return
        log.error("stopping the worker in %.1f s", delay)
        self.loop.loop.call_later(delay, os.kill, os.getpid(), signal.SIGTERM)

    async def _watch(self) -> None:
        """The engine's death: ``/readyz`` fails and every open stream ends.
        (The outbox writes the heartbeats of quiet streams.)"""
        while not self._stopping:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self._dead is None and self.llm.errored and not self._stopping:
                self._dead = ENGINE_DEAD
                log.error("the vLLM engine died; failing open streams", extra={"open": len(self._streams)})
                await self._fail_open_streams(ENGINE_DEAD, 503)
                self._exit_later()
