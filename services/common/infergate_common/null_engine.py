"""The benchmark engine: a worker that answers at once and streams N tokens
at a set pace, through the real worker API, the real Redis stream protocol
and the real registration. It measures the platform itself (router,
streams, registry) with the model's cost taken out, as LiteLLM's and vLLM
production-stack's mock servers do in their benchmarks. It never serves
users: its backend is ``null`` and its text is ``tok0 tok1 ...``.

    python -m infergate_common.null_engine --model_name null --port 8199 \
        --tokens 16 --token_interval_ms 0 --registry_url http://127.0.0.1:8090

Two options serve the relay benchmark; both are off by default:

* ``--stamp_tokens``: each streamed token reads ``tok<i>@<ns> `` where
  ``<ns>`` is ``time.monotonic_ns()`` taken as the entry is added to the
  Redis pipeline that sends it. ``CLOCK_MONOTONIC`` is one clock for every process on the host,
  so a client on the same machine subtracts it from its receipt time to get
  the relay latency of that token.
* ``--step_streams``: one loop writes the next token of every open stream
  per step, in one Redis pipeline, as a batching engine emits one token per
  running sequence per forward pass (instead of one thread per stream).

And the routing benchmark:

* ``--prefix_cache_blocks N`` (with ``--prefix_block_tokens``,
  ``--prefill_ms_per_token``): a bounded prefix cache per replica; the first
  token waits for the prefill of the uncached part of the prompt
  (:mod:`infergate_common.null_prefix_cache`).
* ``--stats_file PATH``: requests in flight (now and integrated over time)
  and the prefix cache's counts, rewritten as JSON every 200 ms.

* ``--tag_tokens``: each streamed token reads ``<request id>:tok<i> ``, so a
  client can tell a token of another stream from its own.
* ``--answer_ms``: how long a non-streamed answer takes (0 by default), so
  a test can hold requests in flight without streaming.

Either way the entries go through the shared
:class:`~infergate_common.stream_writer.StreamOutbox`, as worker-hf's do, and
the tokens are numbered, so a client can check that none was lost,
repeated or taken from another stream.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from .engine import Engine
from .errors import InvalidRequest
from .logs import configure_logging
from .null_prefix_cache import LoadMeter, PrefixCacheModel
from .settings import load_settings
from .stream_writer import OpenStream, StreamOutbox, stream_client
from .streams import DEFAULT_TTL_S, StreamEvent, encode_event
from .worker_api import (
    Backend,
    DetokenizeRequest,
    DetokenizeResponse,
    EncodeRequest,
    EncodeResponse,
    FinishReason,
    GenerateChoice,
    GenerateRequest,
    GenerateResponse,
    Task,
    TokenizeRequest,
    TokenizeResponse,
    Usage,
    WorkerInfo,
)
from .worker_runner import WorkerServerSettings, run_worker


class NullEngine(Engine):
    def __init__(
        self,
        name: str,
        task: Task,
        tokens: int,
        token_interval_s: float,
        redis_client: Any,
        stream_prefix: str,
        max_model_len: int = 4096,
        dimensions: int = 8,
        stamp_tokens: bool = False,
        tag_tokens: bool = False,
        step_streams: bool = False,
        prefix_cache: PrefixCacheModel | None = None,
        stats_file: Path | None = None,
        stream_ttl_s: int = DEFAULT_TTL_S,
        answer_s: float = 0.0,
    ) -> None:
        self.name = name
        self.answer_s = answer_s
        self.task = task
        self.tokens = tokens
        self.interval = token_interval_s
        self.redis = redis_client
        self.prefix = stream_prefix
        self.max_model_len = max_model_len
        self.dimensions = dimensions
        self.stamp_tokens = stamp_tokens
        self.tag_tokens = tag_tokens
        self.step_streams = step_streams
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()
        self.loaded = False
        self._running: list[_SteppedStream] = []
        # Streams not ended yet, by request id (both stream modes).
        self._open: set[str] = set()
        self._wakeup = threading.Event()
        self._stepper: threading.Thread | None = None
        outbox_class = _StampingOutbox if stamp_tokens else StreamOutbox
        self.outbox = outbox_class(
            redis_client, stream_prefix, on_failure=self.cancel, ttl_s=stream_ttl_s, model=name
        )
        self.prefix_cache = prefix_cache
        self.load_meter = LoadMeter()
        self.stats_file = stats_file
        if stats_file is not None:
            threading.Thread(target=self._write_stats, name="stats", daemon=True).start()

    def _write_stats(self) -> None:
        assert self.stats_file is not None
        partial = self.stats_file.with_suffix(".partial")
        while True:
            stats: dict[str, Any] = {"load": self.load_meter.stats()}
            if self.prefix_cache is not None:
                stats["prefix_cache"] = self.prefix_cache.stats()
            partial.write_text(json.dumps(stats))
            os.replace(partial, self.stats_file)
            time.sleep(0.2)

    @staticmethod
    def _prompt_text(request: GenerateRequest) -> str:
        if isinstance(request.prompt, list):
            return " ".join(str(t) for t in request.prompt)
        if request.prompt is not None:
            return request.prompt
        return "\n".join(f"{m.role}: {m.content or ''}" for m in request.messages or [])

    def _prefill(self, request: GenerateRequest) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.prefill(self._prompt_text(request))

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            name=self.name,
            model_id="infergate/null-engine",
            task=self.task,
            backend=Backend.NULL,
            backend_reason="benchmark engine (answers instantly, never serves users)",
            architecture="NullEngine",
            dtype="none",
            device="none",
            max_model_len=self.max_model_len,
            chat_template=True,
        )

    def load(self) -> None:
        self.loaded = True

    def ready(self) -> tuple[bool, str]:
        return (True, "") if self.loaded else (False, "loading")

    @staticmethod
    def _prompt_tokens(request: GenerateRequest) -> int:
        if isinstance(request.prompt, list):
            return len(request.prompt)
        if request.prompt is not None:
            return max(1, len(request.prompt.split()))
        return sum(len(str(m.content or "").split()) + 1 for m in request.messages or [])

    def _count(self, request: GenerateRequest) -> tuple[int, str]:
        limit = request.params.max_tokens
        if limit is not None and limit < self.tokens:
            return limit, "length"
        return self.tokens, "stop"

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.load_meter.enter()
        try:
            self._prefill(request)
            if self.answer_s:
                time.sleep(self.answer_s)
            return self._answer(request)
        finally:
            self.load_meter.leave()

    def _answer(self, request: GenerateRequest) -> GenerateResponse:
        count, reason = self._count(request)
        text = "".join(f"tok{i} " for i in range(count))
        prompt_tokens = self._prompt_tokens(request)
        choices = [
            GenerateChoice(index=i, text=text, finish_reason=reason, completion_tokens=count)  # type: ignore[arg-type]
            for i in range(request.params.n)
        ]
        completion = count * request.params.n
        return GenerateResponse(
            request_id=request.request_id,
            choices=choices,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                total_tokens=prompt_tokens + completion,
            ),
        )

    def _token_text(self, i: int, request_id: str) -> str:
        text = f"tok{i}@{_STAMP_MARK} " if self.stamp_tokens else f"tok{i} "
        return f"{request_id}:{text}" if self.tag_tokens else text

    def active_streams(self) -> list[str]:
        with self.lock:
            return list(self._open)

    def default_capacity(self) -> int:
        # It answers instantly: its capacity is the benchmark's, not a model's.
        return 4096

    def start_stream(self, request: GenerateRequest) -> None:
        with self.lock:
            self._open.add(request.request_id)
        if self.step_streams:
            self._admit(request)
            return
        threading.Thread(target=self._stream, args=(request,), daemon=True).start()

    def _admit(self, request: GenerateRequest) -> None:
        count, reason = self._count(request)
        stream = _SteppedStream(request, self.outbox.open(request.request_id), count, reason)
        with self.lock:
            self._running.append(stream)
            if self._stepper is None:
                self._stepper = threading.Thread(target=self._step_loop, daemon=True)
                self._stepper.start()
        self._wakeup.set()

    def _step_loop(self) -> None:
        """Queue one token of every running stream per step, then hand the
        step to the outbox: one pipeline for the step."""
        while True:
            self._wakeup.wait()
            with self.lock:
                running = list(self._running)
                if not running:
                    self._wakeup.clear()
                    continue
            finished = [stream for stream in running if stream.step(self)]
            self.outbox.flush()
            if finished:
                with self.lock:
                    for stream in finished:
                        self._running.remove(stream)
                        self.cancelled.discard(stream.request.request_id)
                        self._open.discard(stream.request.request_id)
            if self.interval:
                time.sleep(self.interval)

    def _stream(self, request: GenerateRequest) -> None:
        self.load_meter.enter()
        try:
            self._prefill(request)
            self._write_stream(request)
        finally:
            self.load_meter.leave()
            with self.lock:
                self._open.discard(request.request_id)
                self.cancelled.discard(request.request_id)

    def _write_stream(self, request: GenerateRequest) -> None:
        stream = self.outbox.open(request.request_id)
        count, reason = self._count(request)
        n = request.params.n
        for i in range(count):
            if request.request_id in self.cancelled:
                stream.done({c: "abort" for c in range(n)}, Usage(prompt_tokens=0, total_tokens=0))
                self.outbox.flush()
                with self.lock:
                    self.cancelled.discard(request.request_id)
                return
            for choice in range(n):
                final = reason if i == count - 1 else None
                stream.delta(choice, self._token_text(i, request.request_id), 1, finish_reason=final)  # type: ignore[arg-type]
            self.outbox.flush()
            if self.interval:
                time.sleep(self.interval)
        prompt_tokens = self._prompt_tokens(request)
        completion = count * n
        stream.done(
            {c: reason for c in range(n)},  # type: ignore[misc]
            Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                total_tokens=prompt_tokens + completion,
            ),
        )
        self.outbox.flush()

    def cancel(self, request_id: str) -> bool:
        with self.lock:
            self.cancelled.add(request_id)
        return True

    def encode(self, request: EncodeRequest) -> EncodeResponse:
        if self.task.generative:
            raise InvalidRequest("this model generates text")
        dims = request.dimensions or self.dimensions
        vectors = [[round(1.0 / dims**0.5, 6)] * dims for _ in request.inputs]
        tokens = sum(len(text.split()) for text in request.inputs)
        return EncodeResponse(
            request_id=request.request_id,
            task=self.task,
            predictions=vectors,
            datatype="FP32",
            shape=[len(vectors), dims],
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        text = request.prompt or " ".join(str(m.content or "") for m in request.messages or [])
        ids = list(range(len(text.split())))
        return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=self.max_model_len)

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        return DetokenizeResponse(prompt=" ".join(f"tok{t}" for t in request.tokens))


# Replaced by the send time as the entry is added to its pipeline.
_STAMP_MARK = "@@send-ns@@"


class _StampingOutbox(StreamOutbox):
    """Stamps each token with the time its entry goes into the pipeline."""

    def encode(self, event: StreamEvent) -> dict[str, str]:
        fields = encode_event(event)
        fields["data"] = fields["data"].replace(_STAMP_MARK, str(time.monotonic_ns()))
        return fields


class _SteppedStream:
    """One open stream of the stepping loop: its writer and its progress."""

    def __init__(self, request: GenerateRequest, stream: OpenStream, count: int, reason: str) -> None:
        self.request = request
        self.stream = stream
        self.count = count
        self.reason = reason
        self.next = 0

    def _usage(self, completion: int) -> Usage:
        prompt = NullEngine._prompt_tokens(self.request)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def step(self, engine: NullEngine) -> bool:
        """Queue this stream's next entries; True once it ended."""
        n = self.request.params.n
        if self.request.request_id in engine.cancelled or self.stream.failed:
            self.stream.done({c: "abort" for c in range(n)}, self._usage(0))
            return True
        i = self.next
        self.next += 1
        for choice in range(n):
            last = self.reason if i == self.count - 1 else None
            self.stream.delta(choice, engine._token_text(i, self.request.request_id), 1, finish_reason=last)  # type: ignore[arg-type]
        if self.next < self.count:
            return False
        reasons: dict[int, FinishReason] = {c: self.reason for c in range(n)}  # type: ignore[misc]
        self.stream.done(reasons, self._usage(self.count * n))
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_name", default="null")
    parser.add_argument("--task", default=Task.TEXT_GENERATION.value, choices=[t.value for t in Task])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--token_interval_ms", type=float, default=0.0)
    parser.add_argument(
        "--stamp_tokens",
        action="store_true",
        help="put the monotonic send time (ns) in each streamed token: tok<i>@<ns>",
    )
    parser.add_argument(
        "--step_streams",
        action="store_true",
        help="write one token of every open stream per step in one Redis pipeline",
    )
    parser.add_argument("--prefix_cache_blocks", type=int, default=0, help="0: no prefix cache model")
    parser.add_argument("--prefix_block_tokens", type=int, default=16)
    parser.add_argument("--prefill_ms_per_token", type=float, default=0.05)
    parser.add_argument("--stats_file", type=Path)
    parser.add_argument("--routing_policy")
    parser.add_argument(
        "--tag_tokens",
        action="store_true",
        help="put the request id in each streamed token: <request id>:tok<i>",
    )
    parser.add_argument(
        "--stream_ttl_s",
        type=int,
        default=DEFAULT_TTL_S,
        help="how long a stream's key outlives its last entry (a soak keeps Redis small with a short one)",
    )
    parser.add_argument("--answer_ms", type=float, default=0.0, help="how long a non-streamed answer takes")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--registry_url")
    parser.add_argument("--redis_url")
    parser.add_argument("--capacity", type=int)
    parser.add_argument("--drain_s", type=float)
    parser.add_argument("--health_port", type=int)
    args = parser.parse_args(argv)
    configure_logging("worker-null")
    settings = load_settings(
        WorkerServerSettings,
        host=args.host,
        port=args.port,
        registry_url=args.registry_url,
        redis_url=args.redis_url,
        capacity=args.capacity,
        drain_s=args.drain_s,
        health_port=args.health_port,
        routing_policy=args.routing_policy,
    )
    engine = NullEngine(
        args.model_name,
        Task(args.task),
        args.tokens,
        args.token_interval_ms / 1000.0,
        stream_client(settings.redis_url),
        settings.stream_prefix,
        stamp_tokens=args.stamp_tokens,
        tag_tokens=args.tag_tokens,
        stream_ttl_s=args.stream_ttl_s,
        step_streams=args.step_streams,
        prefix_cache=(
            PrefixCacheModel(args.prefix_cache_blocks, args.prefix_block_tokens, args.prefill_ms_per_token)
            if args.prefix_cache_blocks > 0
            else None
        ),
        stats_file=args.stats_file,
        answer_s=args.answer_ms / 1000.0,
    )
    return run_worker(engine, settings)


if __name__ == "__main__":
    raise SystemExit(main())
