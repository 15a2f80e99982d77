"""The small interface every worker engine implements.

The worker HTTP app (:mod:`infergate_common.worker_app`) calls only these
methods; worker-hf, worker-vllm and the benchmark engine subclass it. A task
family that does not serve a route keeps the default, which answers 501.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from .errors import NotImplementedForModel
from .worker_api import (
    DetokenizeRequest,
    DetokenizeResponse,
    EncodeRequest,
    EncodeResponse,
    GenerateRequest,
    GenerateResponse,
    TabularPredictRequest,
    TabularPredictResponse,
    TokenizeRequest,
    TokenizeResponse,
    WorkerInfo,
)

# The smallest default capacity: a replica that runs one request at a time
# (batching off) still queues a few dozen before it refuses.
MIN_DEFAULT_CAPACITY = 64


class Engine(ABC):
    """A loaded model behind the internal worker API.

    ``load()`` runs once, in a background thread, before the engine is
    ready; every other method may be called from many threads at once.
    """

    @abstractmethod
    def info(self) -> WorkerInfo:
        """What is served; valid before ``load()`` returns where known."""

    @abstractmethod
    def load(self) -> None:
        """Load the model and start the engine (slow)."""

    @abstractmethod
    def ready(self) -> tuple[bool, str]:
        """(ready, reason when not ready)."""

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        raise NotImplementedForModel(f"task {self.info().task.value} does not generate text")

    def start_stream(self, request: GenerateRequest) -> None:
        """Admit a streaming generation and return at once; the tokens go to
        the request's Redis stream."""
        raise NotImplementedForModel(f"task {self.info().task.value} does not generate text")

    def encode(self, request: EncodeRequest) -> EncodeResponse:
        raise NotImplementedForModel(f"task {self.info().task.value} does not encode inputs")

    def predict(self, request: TabularPredictRequest) -> TabularPredictResponse:
        raise NotImplementedForModel(f"task {self.info().task.value} does not predict from numeric rows")

    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        raise NotImplementedForModel("this engine has no tokenizer")

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        raise NotImplementedForModel("this engine has no tokenizer")

    def active_streams(self) -> list[str]:
        """Request ids of the streamed generations this engine still runs
        or queues (they count against the replica's capacity after their
        ``/generate`` call has returned, and a draining worker waits for
        them)."""
        return []

    def default_capacity(self) -> int:
        """Requests admitted at once (running and waiting) when the worker's
        ``capacity`` setting is not given."""
        return MIN_DEFAULT_CAPACITY

    def cancel(self, request_id: str) -> bool:
        """Stop a generation and free its slot; False when it is unknown."""
        return False

    def shutdown(self) -> None:
        """Release the engine (called once at exit)."""
        return None
