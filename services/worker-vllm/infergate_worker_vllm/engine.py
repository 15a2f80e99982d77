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

from infergate_common.engine import Engine
from infergate_common.errors import (
    InfergateError,
    InvalidRequest,
    ServiceUnavailable,
)
from infergate_common.stream_writer import AsyncStreamOutbox, OpenStream, async_stream_client
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
    Usage,
    WorkerInfo,
)

from .backend_choice import BackendChoice
from .background_loop import BackgroundLoop
from .logprobs import LogprobMapper
from .prompts import RenderedPrompt, check_token_ids, has_chat_template, render_chat, render_prompt
from .sampling import completion_budget, finish_reason, to_vllm
from .settings import VllmWorkerSettings

log = logging.getLogger(__name__)

# How often the loop checks the engine's health and the streams' silence.
WATCH_INTERVAL_S = 0.25
ENGINE_DEAD = "the vLLM engine died"

Emit = Callable[[int, str, int, list[TokenLogprob] | None, FinishReason | None], None]


@dataclass
class _Job:
    request_id: str
    params: SamplingParams
    prompt: RenderedPrompt
    sampling: Any
    echo: bool


@dataclass
class _Choice:
    mapper: LogprobMapper
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
        self.loop = BackgroundLoop("vllm-asyncio")
        self.outbox: AsyncStreamOutbox | None = None
        self.llm: Any = None
        self.tokenizer: Any = None
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
        self.loop.submit(self._watch())
        self._loaded.set()
        log.info(
            "vLLM engine ready",
            extra={"max_model_len": self.max_model_len, "dtype": self.dtype, "device": self.device},
        )

    async def _start_engine(self) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(self.engine_args)

    async def _start_outbox(self) -> None:
        self.outbox = AsyncStreamOutbox(
            async_stream_client(self.settings.redis_url),
            self.settings.stream_prefix,
            on_failure=self._stream_failed,
        )
        self.outbox.start()

    def _stream_failed(self, request_id: str) -> None:
        """Redis refused the request's stream (called on the loop): nobody
        can read the rest, so the engine stops generating it."""
        log.error("token stream lost; aborting the generation", extra={"request_id": request_id})
        with self._lock:
            if request_id not in self._active:
                return
            self._cancelled.add(request_id)
        if self.llm is not None and not self.llm.errored:
            self.loop.loop.create_task(self.llm.abort(request_id))

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
        }
        if self._loaded.is_set():
            extra["unfinished_requests"] = self.llm.get_num_unfinished_requests()
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
        params = request.params
        # Echo is a completions feature; a chat returns only the answer.
        echo = params.echo and request.messages is None
        with self._tokenizer_lock:
            prompt = render_prompt(
                self.tokenizer,
                request.prompt,
                request.messages,
                self.settings.model_name,
                want_offsets=echo and params.logprobs is not None,
            )
        assert self.max_model_len is not None
        max_tokens = completion_budget(params, len(prompt.token_ids), self.max_model_len)
        sampling = to_vllm(params, max_tokens, self.max_logprobs)
        with self._lock:
            if request.request_id in self._active:
                raise InvalidRequest(
                    f"request id {request.request_id} is already in flight", param="request_id", status=409
                )
            self._active.add(request.request_id)
        return _Job(request.request_id, params, prompt, sampling, echo)

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        job = self._prepare(request)
        try:
            future = self.loop.submit(self._complete(job))
        except Exception:
            self._release(job.request_id)
            raise
        return future.result()

    def start_stream(self, request: GenerateRequest) -> None:
        job = self._prepare(request)
        try:
            self.loop.submit(self._stream(job))
        except Exception:
            self._release(job.request_id)
            raise

    def cancel(self, request_id: str) -> bool:
        with self._lock:
            if request_id not in self._active:
                return False
            self._cancelled.add(request_id)
        if self._loaded.is_set() and not self.llm.errored:
            self.loop.run(self.llm.abort(request_id), timeout=5)
        return True

    def _release(self, request_id: str) -> None:
        with self._lock:
            self._active.discard(request_id)
            self._cancelled.discard(request_id)

    async def _complete(self, job: _Job) -> GenerateResponse:
        choices: dict[int, _Choice] = {}

        def collect(
            index: int,
            text: str,
            tokens: int,
            logprobs: list[TokenLogprob] | None,
            finish: FinishReason | None,
        ) -> None:
            choice = choices.setdefault(index, _Choice(LogprobMapper(0, self._decode_one)))
            choice.parts.append(text)
            if logprobs:
                choice.logprobs.extend(logprobs)

        finish, usage, counts = await self._drive(job, collect)
        want_logprobs = job.params.logprobs is not None
        return GenerateResponse(
            request_id=job.request_id,
            choices=[
                GenerateChoice(
                    index=i,
                    text="".join(choices[i].parts) if i in choices else "",
                    finish_reason=finish[i],
                    completion_tokens=counts[i],
                    logprobs=(choices[i].logprobs if i in choices else []) if want_logprobs else None,
                )
                for i in range(job.params.n)
            ],
            usage=usage,
        )

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
        choices = [_Choice(LogprobMapper(top, self._decode_one)) for _ in range(job.params.n)]
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
                emit(index, "", 0, None, "abort")
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
        if finish is not None:
            choice.finish = finish
        if not text and not token_ids and finish is None:
            return
        emit(completion.index, text, len(token_ids), logprobs or None, finish)

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
