"""Token usage of the current request, gathered where the worker answers.

The worker client adds each response's usage to the counter of the request
being served (a context variable, so it follows the request into the
greenlets that fan a batched request out); the rate limiter settles it
once the response is sent. Free of Flask, like the rest of dispatch.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass
class TokenCount:
    prompt: int = 0
    completion: int = 0

    def add(self, prompt: int, completion: int) -> None:
        self.prompt += prompt
        self.completion += completion

    @property
    def total(self) -> int:
        return self.prompt + self.completion


current: contextvars.ContextVar[TokenCount | None] = contextvars.ContextVar("infergate_usage", default=None)


def record(prompt: int, completion: int) -> None:
    counter = current.get()
    if counter is not None:
        counter.add(prompt, completion)
