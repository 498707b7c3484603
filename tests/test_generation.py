"""The shared generation layer: batched CPU generation (unpadded prompt pass, in-place KV cache)
gives exactly the tokens of a plain greedy loop without any cache, for every model family."""

from __future__ import annotations

import pytest

from conftest import make_model, make_tokenizer


def greedy_without_cache(model, ids: list[int], n: int) -> list[int]:
    import torch

    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3", "gemma3"])
def test_batched_generation_equals_a_plain_greedy_loop(family, monkeypatch):
    import random

    from tunesmith.models import loading

    tok = make_tokenizer(family)
    model = make_model(family, tok)
    rng = random.Random(0)
    # lengths far apart, so the padded batch would be mostly padding
    prompts = [[rng.randrange(10, len(tok)) for _ in range(n)] for n in (3, 41, 17, 70)]
    unpadded = []
    real = loading.prefill_unpadded
    monkeypatch.setattr(loading, "prefill_unpadded", lambda *a, **k: unpadded.append(1) or real(*a, **k))

    outs = loading.generate_ids(model, prompts, pad_id=tok.pad_token_id, stop_ids=[], max_new_tokens=12)

    assert [ids for ids, _ in outs] == [greedy_without_cache(model, p, 12) for p in prompts]
    # sliding-window layers (gemma3) keep transformers' own cache and the padded prompt pass
    assert unpadded == ([] if family == "gemma3" else [1])


def test_growing_cache_layer_keeps_every_token_in_place():
    import torch

    from tunesmith.models.kvcache import growing_cache

    cache = growing_cache(reserve=2)
    k = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    keys, _ = cache.update(k, -k, 0)
    buffer = cache.layers[0]._k
    assert buffer.shape[-2] == 5  # 3 tokens + room for 2 more
    for step in range(4):  # the third new token outgrows the room: one reallocation, nothing lost
        new = torch.full((1, 2, 1, 4), 100.0 + step)
        keys, values = cache.update(new, -new, 0)
    assert keys.shape[-2] == 7 and cache.get_seq_length() == 7
    assert torch.equal(keys[:, :, :3], k) and torch.equal(values[:, :, :3], -k)
    assert keys[0, 0, 3:, 0].tolist() == [100.0, 101.0, 102.0, 103.0]
    assert cache.layers[0]._k is not buffer and cache.layers[0]._k.shape[-2] == 8


@pytest.mark.parametrize("kind", ["prompt-tuning", "prefix-tuning"])
def test_prompt_and_prefix_adapters_keep_pefts_own_generation_path(kind):
    """Virtual tokens and PEFT's prefix cache: batched generation equals the plain greedy loop
    through the PEFT model (our cache handling steps aside for these adapters)."""
    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    from tunesmith.models import loading

    tok = make_tokenizer("llama")
    base = make_model("llama", tok)
    cls = PromptTuningConfig if kind == "prompt-tuning" else PrefixTuningConfig
    model = get_peft_model(base, cls(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)  # a visible effect on the output
    prompts = [[20 + i for i in range(n)] for n in (3, 30, 11)]
    outs = loading.generate_ids(model, prompts, pad_id=tok.pad_token_id, stop_ids=[], max_new_tokens=6)
    assert [ids for ids, _ in outs] == [greedy_without_cache(model, p, 6) for p in prompts]
