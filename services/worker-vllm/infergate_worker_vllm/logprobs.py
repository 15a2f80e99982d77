"""vLLM's logprobs (one ``{token_id: Logprob}`` per position, the sampled
token plus the top ones by rank) as the worker API's TokenLogprob list, with
each token's offset in the returned text as vLLM's own server computes it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from infergate_common.worker_api import TokenLogprob, TopLogprob

# JSON has no -inf; OpenAI (and vLLM's server) clamp to this.
_FLOOR = -9999.0


def _clamp(value: float) -> float:
    return _FLOOR if math.isnan(value) or value < _FLOOR else float(value)


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


class LogprobMapper:
    """Maps one choice's positions, tracking the next text offset."""

    def __init__(self, top: int, decode: Callable[[int], str], start_offset: int = 0) -> None:
        self.top = top
        self.decode = decode
        self.next_offset = start_offset

    def _token_text(self, token_id: int, entry: Any | None) -> str:
        decoded = getattr(entry, "decoded_token", None) if entry is not None else None
        return decoded if decoded is not None else self.decode(token_id)

    def one(self, token_id: int, position: dict[int, Any] | None, offset: int | None = None) -> TokenLogprob:
        if offset is not None:
            self.next_offset = offset
        here = self.next_offset
        if position is None:
            token = self._token_text(token_id, None)
            self.next_offset += len(token)
            return TokenLogprob(token=token, logprob=None, bytes=_bytes(token), text_offset=here)
        chosen = position.get(token_id)
        token = self._token_text(token_id, chosen)
        ranked = sorted(
            ((tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= self.top),
            key=lambda item: item[1].rank,
        )[: self.top]
        top = []
        for tid, lp in ranked:
            text = self._token_text(tid, lp)
            top.append(TopLogprob(token=text, logprob=_clamp(lp.logprob), bytes=_bytes(text)))
        self.next_offset += len(token)
        logprob = _clamp(chosen.logprob) if chosen is not None else None
        return TokenLogprob(token=token, logprob=logprob, bytes=_bytes(token), text_offset=here, top=top)

    def many(
        self,
        token_ids: Sequence[int],
        positions: Sequence[dict[int, Any] | None],
        offsets: Sequence[int] | None = None,
    ) -> list[TokenLogprob]:
        out = []
        for i, token_id in enumerate(token_ids):
            position = positions[i] if i < len(positions) else None
            offset = offsets[i] if offsets is not None and i < len(offsets) else None
            out.append(self.one(token_id, position, offset))
        return out
