"""A key/value cache for sampling that writes each step in place instead of concatenating.

``transformers``' default cache (``DynamicCache`` of ``DynamicLayer``) grows each layer's keys and values with
``torch.cat`` at every decoding step, so a sequence of n new tokens copies the whole cache n times: with the
small CPU models that copy is the largest cost of sampling (about 38% of a spanner batch of 128 samples, more
than the attention itself). :class:`PreallocatedCache` keeps the same layers over a buffer sized for the
prompt plus every new token and writes each step into it; the keys and values the model attends to are the
same numbers in the same shapes, so the samples and their log-probabilities are the same, bit for bit
(``tests/test_kvcache.py``; ``benchmarks/bench_deploy.py --kv-cache`` times both on one model and checks it).

Only the model's plain full-attention layers are replaced; sliding-window or other layer kinds keep
``transformers``' own. A layer whose keys were replaced from outside (``crop``, ``batch_select_indices``,
``reorder_cache``: not used in sampling) is copied into a fresh buffer at its next update.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from transformers.cache_utils import DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers with room for ``capacity`` positions
    (grown by doubling if a step needs more)."""

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity = int(capacity)
        self._buffers: tuple[Any, Any] | None = None
        self._length = 0

    def _holds_current(self) -> bool:
        """Whether ``keys`` is still the view this layer last gave out (nothing replaced it since)."""
        if self._buffers is None or self.keys is None:
            return False
        buf = self._buffers[0]
        return (self.keys.data_ptr() == buf.data_ptr() and self.keys.shape[-2] == self._length
                and self.keys.shape[:-2] == buf.shape[:-2])

    def _allocate(self, like_keys: Any, like_values: Any, room: int) -> None:
        """Buffers shaped as ``like_*`` with ``room`` positions, holding the first ``self._length`` of the old."""
        keys = like_keys.new_empty((*like_keys.shape[:-2], room, like_keys.shape[-1]))
        values = like_values.new_empty((*like_values.shape[:-2], room, like_values.shape[-1]))
        if self._buffers is not None and self._length:
            keys[..., : self._length, :] = self._buffers[0][..., : self._length, :]
            values[..., : self._length, :] = self._buffers[1][..., : self._length, :]
        self._buffers = (keys, values)

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if not self._holds_current():  # first update, or keys replaced from outside: start over from them
            held = self.keys if self.keys is not None and self.keys.numel() else None
            held_values = self.values if held is not None else None
            self._buffers, self._length = None, 0
            n_held = held.shape[-2] if held is not None else 0
            self._allocate(key_states, value_states, max(self.capacity, n_held + key_states.shape[-2]))
            if held is not None:
                self._buffers[0][..., :n_held, :] = held
                self._buffers[1][..., :n_held, :] = held_values
                self._length = n_held
        start, end = self._length, self._length + key_states.shape[-2]
        if end > self._buffers[0].shape[-2]:
            self._allocate(key_states, value_states, max(end, 2 * self._buffers[0].shape[-2]))
        keys, values = self._buffers
        keys[..., start:end, :] = key_states
        values[..., start:end, :] = value_states
        self._length = end
        self.keys, self.values = keys[..., :end, :], values[..., :end, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._buffers, self._length = None, 0
        super().reset()


class PreallocatedCache(DynamicCache):
    """``DynamicCache`` for ``config``'s model with its full-attention layers made :class:`PreallocatedLayer`
    of ``capacity`` positions (the prompt's padded length plus ``max_new_tokens`` for one ``generate`` call)."""

    def __init__(self, *, config: Any, capacity: int) -> None:
        super().__init__(config=config)
        self.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in self.layers]
        if self.layer_class_to_replicate is DynamicLayer:
            self.layer_class_to_replicate = functools.partial(PreallocatedLayer, capacity)


def cache_keyword(model: Any) -> str:
    """The name ``generate`` takes a cache under for ``model``: ``cache`` where the model's forward has it
    (transformers from about 5.20 on; ``past_key_values`` is deprecated there), else ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
