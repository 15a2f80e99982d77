"""What every worker-hf engine shares: loading, ``/info``, readiness,
tokenize and detokenize. Task families subclass it (encoders, generation)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from infergate_common.engine import Engine
from infergate_common.errors import InvalidRequest, ServiceUnavailable
from infergate_common.tool_calls import template_messages
from infergate_common.worker_api import (
    Backend,
    ChatMessage,
    DetokenizeRequest,
    DetokenizeResponse,
    Task,
    TokenizeRequest,
    TokenizeResponse,
    ToolSpec,
    WorkerInfo,
)

from .loading import LoadedModel, gpu_warning, load_model, resolve_device, resolve_dtype
from .settings import HFWorkerSettings

log = logging.getLogger(__name__)


def backend_reason(settings: HFWorkerSettings) -> str:
    """Why transformers serves this model, for ``/info`` and the registry."""
    if settings.backend_reason:
        return settings.backend_reason
    if settings.backend == "huggingface":
        return "--backend huggingface asked"
    if settings.backend == "vllm":
        return "--backend vllm asked, but worker-hf was started directly: serving with transformers"
    return "worker-hf started directly (the vLLM launcher chooses between backends)"


class HFEngine(Engine):
    """A transformers model behind the worker API.

    ``load()`` loads the model, then calls :meth:`start` so a subclass can
    start its threads; the engine is ready once both returned.
    """

    def __init__(self, settings: HFWorkerSettings, task: Task, redis_client: Any) -> None:
        self.settings = settings
        self.task = task
        self.redis = redis_client
        self.loaded: LoadedModel | None = None
        # Fast tokenizers refuse concurrent calls ("Already borrowed").
        self.tokenizer_lock = threading.Lock()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        if settings.backend == "vllm" and not settings.backend_reason:
            log.warning("--backend vllm asked of worker-hf; serving with transformers")

    # ------------------------------------------------------------ lifecycle

    def load(self) -> None:
        loaded = load_model(self.settings, self.task)
        self.loaded = loaded
        self.start(loaded)
        self._ready.set()

    def start(self, loaded: LoadedModel) -> None:
        """Start what the task family needs (threads); called once, after loading."""

    def stop(self) -> None:
        """Stop what :meth:`start` started."""

    def healthy(self) -> tuple[bool, str]:
        """Whether the task family's machinery still runs."""
        return True, ""

    def ready(self) -> tuple[bool, str]:
        if self._stopped.is_set():
            return False, "shutting down"
        if not self._ready.is_set():
            return False, "loading"
        return self.healthy()

    def shutdown(self) -> None:
        self._stopped.set()
        self.stop()

    # ----------------------------------------------------------------- info

    def extra_info(self) -> dict[str, Any]:
        """Facts a task family adds to ``/info``."""
        return {}

    def info(self) -> WorkerInfo:
        loaded = self.loaded
        if loaded is not None:
            device, dtype = loaded.device, loaded.dtype
        else:
            device = resolve_device(self.settings)
            dtype = resolve_dtype(self.settings, device)
        extra = self.extra_info() if loaded else {}
        if device.type == "cpu":
            unusable = gpu_warning(self.settings.model_name)
            if unusable:
                extra["gpu_unusable"] = unusable
        return WorkerInfo(
            name=self.settings.model_name,
            model_id=loaded.model_id if loaded else self.settings.model_path(),
            revision=self.settings.model_revision,
            task=self.task,
            backend=Backend.HUGGINGFACE,
            backend_reason=backend_reason(self.settings),
            architecture=loaded.architecture if loaded else None,
            dtype=str(dtype).removeprefix("torch."),
            device=str(device),
            max_model_len=loaded.max_model_len if loaded else None,
            chat_template=bool(loaded and self.has_chat_template()),
            encoder_decoder=bool(loaded and loaded.encoder_decoder),
            extra=extra,
        )

    # ------------------------------------------------------------- tokenizer

    def require_loaded(self) -> LoadedModel:
        if self.loaded is None:
            raise ServiceUnavailable("model not loaded")
        return self.loaded

    def has_chat_template(self) -> bool:
        loaded = self.loaded
        return bool(loaded is not None and getattr(loaded.tokenizer, "chat_template", None))

    def render_chat(
        self, messages: list[ChatMessage], tools: list[ToolSpec] | None = None, tools_required: bool = False
    ) -> str:
        """The prompt text of a chat, through the tokenizer's chat template
        with the generation prompt; a tokenizer without one is a 400.

        ``tools`` are rendered by the template; a template that ignores them
        is a 400 when ``tools_required`` (the model must see them to call one).
        """
        loaded = self.require_loaded()
        if not self.has_chat_template():
            raise InvalidRequest(
                f"model {self.settings.model_name} has no chat template; use completions instead",
                param="messages",
            )
        conversation = template_messages(messages)
        tool_dicts = [tool.model_dump(exclude_none=True) for tool in tools] if tools else None
        text = self._apply_template(loaded, conversation, tool_dicts)
        if tool_dicts and text == self._apply_template(loaded, conversation, None) and tools_required:
            raise InvalidRequest(
                f"the chat template of model {self.settings.model_name} cannot render tools; "
                "use tool_choice 'required' or a named function (constrained decoding serves those)",
                param="tools",
            )
        return text

    @staticmethod
    def _apply_template(loaded: LoadedModel, conversation: list[Any], tools: list[Any] | None) -> str:
        try:
            text = loaded.tokenizer.apply_chat_template(
                conversation, tools=tools, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:
            raise InvalidRequest(f"chat template failed: {exc}", param="messages") from exc
        return str(text)

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        loaded = self.require_loaded()
        with self.tokenizer_lock:
            return list(loaded.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        loaded = self.require_loaded()
        if request.messages is not None:
            # The template already holds the special tokens it wants.
            tokens = self.encode_text(self.render_chat(request.messages), add_special_tokens=False)
        else:
            tokens = self.encode_text(request.prompt or "", request.add_special_tokens)
        return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=loaded.max_model_len)

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        loaded = self.require_loaded()
        vocab_size = len(loaded.tokenizer)
        bad = [token for token in request.tokens if token < 0 or token >= vocab_size]
        if bad:
            raise InvalidRequest(f"token ids out of range 0..{vocab_size - 1}: {bad[:5]}", param="tokens")
        return DetokenizeResponse(prompt=loaded.tokenizer.decode(request.tokens))

    @staticmethod
    def inference_mode() -> Any:
        return torch.inference_mode()
