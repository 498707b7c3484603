"""Our own KV-cache handling for CPU generation (used by loading.generate_ids).

transformers' continuous batching (`generate_batch`) was measured first: 55 s for the 16-prompt
case below against 25 s for `generate` on a padded batch, so we keep `generate` and fix its two
CPU costs instead: pad tokens in the prompt pass (prefill_unpadded) and a cache that reallocates
every layer at every step (growing_cache)."""

from __future__ import annotations

import functools


def plain_cache(model) -> bool:
    """Whether the model's KV cache is plain full attention (no sliding-window or recurrent layers)."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    peft = getattr(model, "active_peft_config", None)
    # prompt learning brings virtual tokens and PEFT's own prefix cache
    if config is None or (peft is not None and peft.is_prompt_learning):
        return False
    try:
        return all(type(layer).__name__ == "DynamicLayer" for layer in DynamicCache(config=config).layers)
    except Exception:  # a config this version of transformers cannot describe: leave it to generate
        return False


def padding_costs(prompts: list[list[int]]) -> bool:
    """Whether to build the prompts' KV cache one prompt at a time rather than as one padded batch.

    On a CPU the prompt pass is compute-bound, so every pad token costs as much as a real one:
    16 example-data prompts (209-510 tokens) took 16.8 s padded against 11.0 s unpadded.
    (On a GPU the padded batch is one launch and the pads are nearly free; not used there.)"""
    if len(prompts) < 2 or min(len(p) for p in prompts) < 2:
        return False
    width, total = max(len(p) for p in prompts), sum(len(p) for p in prompts)
    return width * len(prompts) > 1.1 * total


def growing_cache(reserve: int):
    """A DynamicCache whose layers grow in place (see `_growing_layer_class`)."""
    from transformers import DynamicCache

    layer = _growing_layer_class()
    cache = DynamicCache()
    cache.layer_class_to_replicate = lambda: layer(reserve)
    return cache


def prefill_unpadded(model, prompts: list[list[int]], width: int, reserve: int):
    """The KV cache of each prompt but its last token, computed one prompt at a time (no pad tokens)
    and then left-padded into one batch cache, so `generate` starts at the last prompt token.

    Rotary positions are applied before keys are cached, and `generate` derives positions from the
    attention mask, so every row sees the same positions as when it is generated alone (tested:
    same greedy tokens as one at a time)."""
    import torch

    dev = next(model.parameters()).device
    caches = [
        model(
            input_ids=torch.tensor([seq[:-1]], device=dev), use_cache=True, logits_to_keep=1
        ).past_key_values
        for seq in prompts
    ]
    merged = growing_cache(reserve)
    for i in range(len(caches[0].layers)):

        def batch(name):  # left-pad each row's cache on the time axis, then stack the rows
            rows = [getattr(c.layers[i], name) for c in caches]  # noqa: B023 (called at once, in this iteration)
            return torch.cat([torch.nn.functional.pad(t, (0, 0, width - 1 - t.shape[2], 0)) for t in rows])

        merged.update(batch("keys"), batch("values"), i)
    return merged


@functools.cache
def _growing_layer_class():
    """Defined on first use: transformers is imported only when generating."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A cache layer written in place into a buffer with room for the tokens still to come.

        transformers' DynamicLayer concatenates the whole cache with each new token, a fresh
        allocation of every layer's keys and values per step: at batch 16 with ~500 cached tokens
        that alone took 129 ms of a step whose matmuls take ~25 ms (page faults on the new memory)."""

        def __init__(self, reserve: int):
            super().__init__()
            self.reserve, self.length = reserve, 0
            self._k = self._v = None

        def update(self, key_states, value_states, *args, **kwargs):

            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if self._k is None or end > self._k.shape[-2] or self._k.shape[0] != key_states.shape[0]:
                shape = (*key_states.shape[:2], end + self.reserve, key_states.shape[-1])
                k, v = key_states.new_empty(shape), value_states.new_empty(shape)
                if self.length:
                    k[:, :, : self.length] = self._k[:, :, : self.length]
                    v[:, :, : self.length] = self._v[:, :, : self.length]
                self._k, self._v = k, v
            self._k[:, :, self.length : end] = key_states
            self._v[:, :, self.length : end] = value_states
            self.length = end
            self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
            return self.keys, self.values

    return GrowingLayer
