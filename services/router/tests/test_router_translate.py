"""Worker results to OpenAI shapes where the null engine cannot go:
log probabilities (completions and chat formats, plain and streamed) and
the finish reasons OpenAI lacks."""

from __future__ import annotations

from typing import Any

import orjson

from infergate_common.streams import DeltaEvent, DoneEvent
from infergate_common.worker_api import GenerateChoice, GenerateResponse, TokenLogprob, TopLogprob, Usage
from infergate_router.protocols.openai.streaming import ChatStream, CompletionStream
from infergate_router.protocols.openai.translate import chat_completion, completion, finish_reason
from infergate_router.sse import SseEvent
from infergate_router.stream_reader import Entry


def payload(event: SseEvent) -> Any:
    """An event's JSON (chunks are rendered to bytes from templates)."""
    return orjson.loads(event.data) if isinstance(event.data, bytes) else event.data


TOKENS = [
    TokenLogprob(token="Hi", logprob=None, text_offset=0),
    TokenLogprob(
        token=" there",
        logprob=-0.5,
        text_offset=2,
        top=[TopLogprob(token=" there", logprob=-0.5), TopLogprob(token=" you", logprob=-1.5)],
    ),
]


def _response(tokens: list[TokenLogprob]) -> GenerateResponse:
    choice = GenerateChoice(
        index=0, text="Hi there", finish_reason="stop", completion_tokens=2, logprobs=tokens
    )
    return GenerateResponse(
        request_id="r", choices=[choice], usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    )


def test_completion_logprobs_format() -> None:
    payload = completion("r", 1, "m", 1, [_response(TOKENS)]).model_dump()
    assert payload["choices"][0]["logprobs"] == {
        "tokens": ["Hi", " there"],
        "token_logprobs": [None, -0.5],
        "top_logprobs": [None, {" there": -0.5, " you": -1.5}],
        "text_offset": [0, 2],
    }


def test_chat_logprobs_format() -> None:
    payload = chat_completion("r", 1, "m", _response(TOKENS[1:])).model_dump()
    content = payload["choices"][0]["logprobs"]["content"]
    assert content == [
        {
            "token": " there",
            "logprob": -0.5,
            "bytes": list(b" there"),
            "top_logprobs": [
                {"token": " there", "logprob": -0.5, "bytes": list(b" there")},
                {"token": " you", "logprob": -1.5, "bytes": list(b" you")},
            ],
        }
    ]


def test_finish_reasons_openai_lacks_map_to_stop() -> None:
    assert finish_reason("abort") == "stop"
    assert finish_reason("length") == "length"
    assert finish_reason(None) is None


def _entry(event: DeltaEvent | DoneEvent, entry_id: str = "1-0") -> Entry:
    return Entry("k", entry_id, event)


def test_streamed_logprobs_and_finish_from_done() -> None:
    stream = CompletionStream("cmpl-r", 1, "m", 2, False, single=True)
    events = list(
        stream.delta(
            0,
            _entry(DeltaEvent(seq=0, index=1, text=" there", tokens=1, logprobs=TOKENS[1:])),
            DeltaEvent(seq=0, index=1, text=" there", tokens=1, logprobs=TOKENS[1:]),
        )
    )
    assert events[0].id == "1-0"
    assert payload(events[0])["choices"][0]["logprobs"]["tokens"] == [" there"]
    assert payload(events[0])["choices"][0]["finish_reason"] is None
    # Choice 0 never sent a final delta: the done entry closes it, choice 1 too.
    done = DoneEvent(
        deltas=1, finish_reasons={"0": "abort", "1": "length"}, usage=Usage(prompt_tokens=1, total_tokens=1)
    )
    closing = list(stream.done(0, _entry(done, "2-0"), done))
    assert [(c["index"], c["finish_reason"]) for c in payload(closing[0])["choices"]] == [
        (0, "stop"),
        (1, "length"),
    ]


def test_chat_stream_role_once_per_choice_and_empty_final_delta() -> None:
    stream = ChatStream("chatcmpl-r", 1, "m", 2, True, single=False)
    first = DeltaEvent(seq=0, index=0, text="a", tokens=1)
    other = DeltaEvent(seq=1, index=1, text="b", tokens=1)
    last = DeltaEvent(seq=2, index=0, text="", tokens=0, finish_reason="stop")
    chunks = [payload(e) for ev in (first, other, last) for e in stream.delta(0, _entry(ev), ev)]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "a"},
        {"role": "assistant", "content": "b"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert all(c["usage"] is None for c in chunks)
    assert all(e.id is None for ev in (first,) for e in stream.delta(0, _entry(ev), ev))
