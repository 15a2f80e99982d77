"""The internal worker API: one contract, implemented by worker-hf and
worker-vllm, called by the router and the batch worker.

Routes (all JSON):

* ``GET /healthz`` -> ``{"status": "ok"}`` while the process lives.
* ``GET /readyz`` -> 200 ``{"ready": true}`` once the model is loaded and
  the engine healthy, else 503 ``{"ready": false, "reason": ...}``.
* ``GET /info`` -> :class:`WorkerInfo`.
* ``POST /generate`` :class:`GenerateRequest` -> :class:`GenerateResponse`
  (200), or with ``stream: true`` :class:`StreamAccepted` (202) once admitted;
  the tokens then travel through Redis (see :mod:`infergate_common.streams`).
* ``POST /encode`` :class:`EncodeRequest` -> :class:`EncodeResponse`.
* ``POST /tokenize`` :class:`TokenizeRequest` -> :class:`TokenizeResponse`.
* ``POST /detokenize`` :class:`DetokenizeRequest` -> :class:`DetokenizeResponse`.
* ``POST /cancel/<request_id>`` -> ``{"cancelled": bool}``.
* ``POST /predict`` :class:`TabularPredictRequest` ->
  :class:`TabularPredictResponse`: numeric rows through a tabular model
  (XGBoost, LightGBM, scikit-learn); the schema the rows must follow is
  :class:`TabularSchema`, in ``WorkerInfo.tabular``.

Errors are ``{"error": {"message", "type", "param", "code", "status"}}`` with
the matching HTTP status (:func:`infergate_common.errors.to_payload`).

The worker knows nothing of OpenAI or KServe shapes: the router translates.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, model_validator


class Task(StrEnum):
    SEQUENCE_CLASSIFICATION = "sequence_classification"
    TOKEN_CLASSIFICATION = "token_classification"
    FILL_MASK = "fill_mask"
    TEXT_GENERATION = "text_generation"
    TEXT2TEXT_GENERATION = "text2text_generation"
    TEXT_EMBEDDING = "text_embedding"
    # Numeric feature rows in, one prediction per row out (worker-tabular).
    TABULAR = "tabular"

    @property
    def generative(self) -> bool:
        return self in (Task.TEXT_GENERATION, Task.TEXT2TEXT_GENERATION)


class Backend(StrEnum):
    HUGGINGFACE = "huggingface"
    VLLM = "vllm"
    # worker-tabular, one per framework (KServe's platform names).
    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"
    SKLEARN = "sklearn"
    # A benchmark engine that answers instantly; it never serves users.
    NULL = "null"


# "tool_calls": the choice ended with tool calls (see :class:`ToolCall`).
FinishReason = Literal["stop", "length", "abort", "error", "tool_calls"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------- info


class TabularSchema(_Model):
    """What a tabular model takes and gives: each request row has
    ``n_features`` values, each prediction is a scalar (``outputs`` 1) or a
    list of ``outputs`` values, of ``output_datatype`` (a v2 datatype)."""

    n_features: int = Field(ge=1)
    feature_names: list[str] | None = None
    # The model's objective (``binary:logistic``, ``regression``, the estimator class, ...).
    objective: str
    outputs: int = Field(1, ge=1)
    output_datatype: str = "FP32"
    # Class labels of a classifier, where the model has them.
    classes: list[Any] | None = None
    # Whether a missing value (null or NaN) is allowed in a row.
    allow_missing: bool = True
    # Output options a request may ask for.
    predict_proba: bool = False
    raw_margin: bool = False


class WorkerInfo(_Model):
    name: str
    model_id: str
    revision: str | None = None
    task: Task
    backend: Backend
    backend_reason: str = ""
    architecture: str | None = None
    dtype: str
    device: str
    max_model_len: int | None = None
    # Generative models: whether the tokenizer has a chat template.
    chat_template: bool = False
    # Whether the model is an encoder-decoder (echo is refused there).
    encoder_decoder: bool = False
    # Names the model also answers to.
    aliases: list[str] = Field(default_factory=list)
    # Requests this replica admits at once (running and waiting); past it
    # the worker answers 503 ``overloaded_error`` and routers try another.
    capacity: int | None = None
    # Extra facts for humans (labels of a classifier, engine flags, ...).
    extra: dict[str, Any] = Field(default_factory=dict)
    # Tabular models: the rows they take and the predictions they give.
    tabular: TabularSchema | None = None


# ----------------------------------------------------------------- generate


class ChatMessage(BaseModel):
    """One chat message as OpenAI sends it; unknown keys travel untouched so
    chat templates that use them (tool calls, names) see them."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class SamplingParams(_Model):
    """What a generation may do. Defaults are OpenAI's; the router fills
    ``max_tokens`` (``None`` means: up to the context length)."""

    n: int = Field(1, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # Number of most likely alternatives to return per token; None: no logprobs.
    logprobs: int | None = Field(None, ge=0, le=20)
    # Completions only: return the prompt before the completion.
    echo: bool = False
    ignore_eos: bool = False
    # Token id -> bias added to its logit before sampling (OpenAI's
    # logit_bias); the bounds are in ``infergate_common.limits``.
    logit_bias: dict[int, float] | None = None


# ----------------------------------------------- tools and structured outputs


class FunctionSpec(BaseModel):
    """A function the model may call (OpenAI's ``tools[].function``)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = None
    # A JSON schema of the arguments object; None: no arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = "function"
    function: FunctionSpec


class FunctionName(_Model):
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming one function: the answer is a call of it."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaSpec(BaseModel):
    """``response_format.json_schema``: the schema the answer must validate against."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)

    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a 'json_schema' object")
        return self


class ToolCall(_Model):
    """A complete call: ``arguments`` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


class ToolCallDelta(_Model):
    """A piece of a streamed call: the first piece of call ``index`` carries
    its ``id`` and ``name``, later ones only ``arguments`` text to append."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class GenerateRequest(_Model):
    request_id: str = Field(min_length=1, max_length=200)
    # Exactly one of prompt (text or token ids) and messages.
    prompt: str | list[int] | None = None
    messages: list[ChatMessage] | None = None
    params: SamplingParams = Field(default_factory=lambda: SamplingParams())
    stream: bool = False
    # Chat only. ``tools`` are rendered by the chat template; ``tool_choice``
    # "required" or named constrains the output to calls of them, "auto"
    # parses the model's own call format, "none" (or no tools) leaves text.
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # json_object / json_schema: the output is constrained to parse (and validate).
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' and 'messages' must be given")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        return self

    @property
    def effective_tool_choice(self) -> ToolChoice:
        """OpenAI's default: "auto" with tools, "none" without."""
        if not self.tools:
            return "none"
        return self.tool_choice if self.tool_choice is not None else "auto"


class TopLogprob(_Model):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Model):
    """One generated (or, with echo, prompt) token with its log probability;
    the first prompt token has none."""

    token: str
    logprob: float | None = None
    bytes: list[int] | None = None
    # Offset of the token's text inside the returned text.
    text_offset: int = 0
    top: list[TopLogprob] = Field(default_factory=list)


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class GenerateChoice(_Model):
    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    # Calls the model made (``text`` then holds only what is not a call).
    tool_calls: list[ToolCall] | None = None


class GenerateResponse(_Model):
    request_id: str
    choices: list[GenerateChoice]
    usage: Usage


class StreamAccepted(_Model):
    """202 answer of a streaming ``/generate``: the Redis stream to read."""

    request_id: str
    stream_key: str


# ------------------------------------------------------------------- encode


class EncodeRequest(_Model):
    request_id: str = Field(min_length=1, max_length=200)
    inputs: list[str] = Field(min_length=1)
    # Per-request overrides of the worker's start-up flags (KServe names).
    return_probabilities: bool | None = None
    return_raw_logits: bool | None = None
    return_offsets_mapping: bool | None = None
    # Label names from id2label instead of class indexes.
    return_labels: bool | None = None
    # Embeddings: truncate to this many dimensions (OpenAI ``dimensions``).
    dimensions: int | None = Field(None, ge=1)
    # Fill mask: how many tokens to return per mask with probabilities or
    # raw logits (default: the worker's ``--fill_mask_top_k``).
    top_k: int | None = Field(None, ge=1)


class EncodeResponse(_Model):
    """One prediction per input, in KServe's v1 shape for the task:

    * sequence classification: class index (int), label name (str),
      ``{"<index>": prob}`` or a list of logits;
    * token classification: ``[[label, ...]]`` per input (KServe's nested
      shape, special and padding positions included);
    * fill mask: the decoded token at each mask (a str, or a list when an
      input has several masks); with probabilities or raw logits, per mask a
      map of the top k token ids to their value;
    * embeddings: a list of floats.

    ``datatype`` and ``shape`` describe the same data as a v2 tensor.
    """

    request_id: str
    task: Task
    predictions: list[Any]
    datatype: str
    shape: list[int]
    offsets_mapping: list[Any] | None = None
    usage: Usage


# ------------------------------------------------------------------ predict


class TabularPredictRequest(_Model):
    """Rows for a tabular model, row-major: ``data`` holds ``shape[0]`` rows
    of ``shape[1]`` numbers each; null is a missing value. The router has
    checked the protocol's datatype; the worker checks the rows against its
    :class:`TabularSchema`."""

    request_id: str = Field(min_length=1, max_length=200)
    shape: list[int] = Field(min_length=2, max_length=2)
    data: list[StrictFloat | None]
    # Class probabilities instead of labels (estimators with predict_proba).
    predict_proba: bool | None = None
    # Untransformed margins instead of the objective's output (XGBoost, LightGBM).
    raw_margin: bool | None = None

    @model_validator(mode="after")
    def _data_fills_shape(self) -> TabularPredictRequest:
        rows, columns = self.shape
        if rows < 1 or columns < 1:
            raise ValueError(f"shape {self.shape} must have at least one row and one column")
        if rows * columns != len(self.data):
            raise ValueError(f"shape {self.shape} needs {rows * columns} values, data has {len(self.data)}")
        return self


class TabularPredictResponse(_Model):
    """One prediction per row: a scalar, or a list of ``shape[1]`` values
    (class probabilities, several targets). ``datatype`` and ``shape``
    describe the same data as a v2 tensor."""

    request_id: str
    predictions: list[Any]
    datatype: str
    shape: list[int]


# ----------------------------------------------------------------- tokenize


class TokenizeRequest(_Model):
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' and 'messages' must be given")
        return self


class TokenizeResponse(_Model):
    tokens: list[int]
    count: int
    max_model_len: int | None = None


class DetokenizeRequest(_Model):
    tokens: list[int]


class DetokenizeResponse(_Model):
    prompt: str


class CancelResponse(_Model):
    cancelled: bool
