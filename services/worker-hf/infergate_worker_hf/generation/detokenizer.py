"""Token ids to text, one token at a time, never splitting a character."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

REPLACEMENT = "\ufffd"
# Tokens of the prompt decoded with the first generated ones, for tokenizers
# whose decoding of a token depends on its neighbours (SentencePiece spaces).
CONTEXT_TOKENS = 5
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def decode(tokenizer: Any, ids: list[int], skip_special_tokens: bool = True) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The Rust tokenizer directly: the Python wrapper costs several times
        # more, and the scheduler decodes after every token of every row.
        return str(backend.decode(ids, skip_special_tokens=skip_special_tokens))
    return str(
        tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
    )


class IncrementalDetokenizer:
    """Decodes a growing list of tokens into text deltas.

    A token that ends inside a multi-byte character decodes to U+FFFD; its
    text is held until the character completes, so a delta never ends with
    half a character. :meth:`flush` releases whatever is left at the end.
    """

    def __init__(self, tokenizer: Any, context: list[int] | None = None) -> None:
        self.tokenizer = tokenizer
        ids = list(context or [])[-CONTEXT_TOKENS:]
        if ids and decode(tokenizer, ids).endswith(REPLACEMENT):
            # A prompt that ends inside a character gives no usable context.
            ids = []
        self.ids = ids
        self.prefix_offset = 0
        self.read_offset = len(ids)

    def _pending(self) -> tuple[str, str]:
        prefix_text = decode(self.tokenizer, self.ids[self.prefix_offset : self.read_offset])
        new_text = decode(self.tokenizer, self.ids[self.prefix_offset :])
        return prefix_text, new_text

    def add(self, token_id: int) -> str:
        """The text this token completes (often empty for partial bytes)."""
        self.ids.append(token_id)
        prefix_text, new_text = self._pending()
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Everything not yet returned, incomplete characters included."""
        prefix_text, new_text = self._pending()
        self.prefix_offset = self.read_offset = len(self.ids)
        if len(new_text) > len(prefix_text):
            return new_text[len(prefix_text) :]
        return ""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-to-printable-character table, inverted.
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


class TokenTexts:
    """The text and raw bytes of single tokens, for logprobs."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._texts: dict[int, str] = {}
        self._bytes: dict[int, list[int]] = {}

    def text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = decode(self.tokenizer, [token_id], skip_special_tokens=False)
            self._texts[token_id] = text
        return text

    def bytes(self, token_id: int) -> list[int]:
        cached = self._bytes.get(token_id)
        if cached is not None:
            return cached
        raw = self._raw_bytes(token_id)
        self._bytes[token_id] = raw
        return raw

    def _raw_bytes(self, token_id: int) -> list[int]:
        if token_id not in self.special_ids:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str):
                fallback = _BYTE_FALLBACK.match(piece)
                if fallback:
                    return [int(fallback.group(1), 16)]
                table = _byte_decoder()
                if self.byte_level and all(char in table for char in piece):
                    return [table[char] for char in piece]
        return list(self.text(token_id).encode("utf-8"))
