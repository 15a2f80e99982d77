"""A key/value cache layer that grows by doubling.

transformers' ``DynamicLayer`` concatenates every new position onto the
whole cache (a full copy per step and layer). This layer keeps keys and
values in buffers with spare room and writes each step in place; batch
edits (select, pad, merge) still assign whole tensors, which the next step
moves into a fresh buffer.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

_MIN_CAPACITY = 16


class GrowableLayer(DynamicLayer):
    def __init__(self, **kwargs: Any) -> None:
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        # Kept apart: DynamicLayer's methods assign keys, then read values.
        self._length = 0
        self._value_length = 0
        super().__init__(**kwargs)

    @staticmethod
    def _view(buffer: torch.Tensor | None, length: int) -> torch.Tensor | None:
        if buffer is None or buffer.dim() < 2:
            return buffer
        return buffer[..., :length, :]

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        return self._view(self._key_buffer, self._length)

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._key_buffer = tensor
        self._length = tensor.shape[-2] if tensor is not None and tensor.dim() >= 2 else 0

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        return self._view(self._value_buffer, self._value_length)

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._value_buffer = tensor
        self._value_length = tensor.shape[-2] if tensor is not None and tensor.dim() >= 2 else 0

    def _fits(self, states: torch.Tensor, end: int) -> bool:
        buffer = self._key_buffer
        return (
            self._length == self._value_length
            and buffer is not None
            and buffer.dim() == states.dim()
            and buffer.shape[-2] >= end
            and buffer.shape[:-2] == states.shape[:-2]
        )

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, end: int) -> None:
        capacity = max(end, 2 * self._length, _MIN_CAPACITY)
        old_keys, old_values, length = self.keys, self.values, self._length
        if self._value_length != length:
            raise RuntimeError(f"cache keys hold {length} positions but values {self._value_length}")
        keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if length and old_keys is not None and old_values is not None:
            keys[..., :length, :] = old_keys
            values[..., :length, :] = old_values
        self._key_buffer, self._value_buffer = keys, values
        self._value_length = length

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self._length
        end = start + key_states.shape[-2]
        if not self._fits(key_states, end):
            self._grow(key_states, value_states, end)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., start:end, :] = key_states
        self._value_buffer[..., start:end, :] = value_states
        self._length = self._value_length = end
        return self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]


def plain_layers(config: Any) -> bool:
    """Whether the model's default cache is plain full-attention layers (no
    sliding windows or other kinds), which GrowableLayer can stand in for."""
    try:
        layers = DynamicCache(config=config).layers
    except Exception:
        return False
    return all(type(layer) is DynamicLayer for layer in layers)


def mergeable(layer: Any) -> bool:
    """Whether a cache layer may be padded, merged and trimmed by the runner."""
    return type(layer) in (DynamicLayer, GrowableLayer)


def growable_cache() -> DynamicCache:
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowableLayer
    return cache
