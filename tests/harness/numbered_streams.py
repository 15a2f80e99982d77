"""Streams of numbered tokens, read and checked exactly.

The benchmark engine started with ``--tag_tokens`` streams
``<request id>:tok0 <request id>:tok1 ...``; :func:`read_stream` reads one
completions stream through the router and :meth:`Outcome.problems` says
what is wrong with it: a token lost, repeated or out of order, a token of
another stream, a normal end (``[DONE]``) short of every token, or an end
that is neither ``[DONE]`` nor an error event.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from .sse import events

TOKEN = re.compile(r"(\S+):tok(\d+) ")


@dataclass
class Outcome:
    request_id: str
    expected: int
    status: int = 0
    tokens: list[int] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    ending: str = "eof"  # "done", "error", "eof", "exception"
    error: Any = None

    def problems(self) -> list[str]:
        found = []
        if self.status != 200:
            found.append(f"status {self.status}: {self.error}")
            return found
        if self.foreign:
            found.append(f"tokens of other streams: {self.foreign[:3]}")
        if self.tokens != list(range(len(self.tokens))):
            found.append(f"tokens lost, repeated or reordered: {_first_break(self.tokens)}")
        if self.ending == "done" and len(self.tokens) != self.expected:
            found.append(f"[DONE] after {len(self.tokens)} of {self.expected} tokens")
        if self.ending not in ("done", "error"):
            found.append(f"ended by {self.ending}: {self.error}")
        return found


def _first_break(tokens: list[int]) -> str:
    for position, token in enumerate(tokens):
        if token != position:
            return f"position {position} holds tok{token}"
    return "none"


def read_stream(
    completions_url: str,
    model: str,
    max_tokens: int,
    timeout_s: float = 30,
    on_token: Callable[[], None] | None = None,
) -> Outcome:
    """One streamed completion, read to its end (``timeout_s`` is the longest
    silence tolerated: a hang fails as ``exception``)."""
    request_id = f"num-{uuid.uuid4().hex}"
    outcome = Outcome(request_id, max_tokens)
    body = {"model": model, "prompt": "x", "max_tokens": max_tokens, "stream": True}
    try:
        with requests.post(
            completions_url, json=body, headers={"X-Request-Id": request_id}, stream=True, timeout=timeout_s
        ) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                outcome.error = response.text
                return outcome
            for event in events(response):
                if event.done:
                    outcome.ending = "done"
                    break
                data = event.json()
                if "error" in data:
                    outcome.ending, outcome.error = "error", data["error"]
                    break
                for choice in data.get("choices") or []:
                    for owner, number in TOKEN.findall(choice.get("text") or ""):
                        if owner != request_id:
                            outcome.foreign.append(owner)
                        outcome.tokens.append(int(number))
                        if on_token is not None:
                            on_token()
    except requests.RequestException as exc:
        outcome.ending, outcome.error = "exception", repr(exc)
    return outcome
