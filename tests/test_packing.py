"""Packed passes under CPU bf16 (batching.packs, collate_packed; attention by segments): each example's loss
and gradients are what they are when it runs alone."""

import pytest
import torch

from conftest import make_model, make_tokenizer, toy_examples, write_jsonl
from tunesmith.models.chat import IGNORE, encode_chat
from tunesmith.train import attention, batching, trainer
from tunesmith.train.config import TrainConfig
from tunesmith.train.loss import answer_loss_sum

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU bf16 path")


class Layer:  # 4 query heads sharing 2 key/value heads
    num_key_value_groups, is_causal, sliding_window = 2, True, None


@pytest.mark.parametrize("chunk", [128, 8])
def test_attention_by_segments_keeps_each_example_to_itself(chunk, monkeypatch):
    import torch.nn.functional as F

    monkeypatch.setattr(attention, "CHUNK", chunk)  # 8: blocks that end inside a segment and at its end
    torch.manual_seed(0)
    bounds = ((0, 13), (13, 30), (30, 37))
    q, k, v = torch.randn(1, 4, 37, 16), torch.randn(1, 2, 37, 16), torch.randn(1, 2, 37, 16)
    g = torch.randn(1, 37, 4, 16)
    q32, k32, v32 = (t.clone().requires_grad_() for t in (q, k, v))
    ref = torch.cat(
        [
            F.scaled_dot_product_attention(
                q32[:, :, s:e],
                k32[:, :, s:e].repeat_interleave(2, 1),
                v32[:, :, s:e].repeat_interleave(2, 1),
                is_causal=True,
                scale=0.3,
            )
            for s, e in bounds
        ],
        2,
    ).transpose(1, 2)
    (ref * g).sum().backward()
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    # the mask transformers builds for a packed row is passed too; the segments make it redundant
    mask = torch.ones(1, 1, 37, 37, dtype=torch.bool)
    out, _ = attention.attention(Layer(), qb, kb, vb, mask, scaling=0.3, **{attention.SEGMENTS: bounds})
    (out.float() * g).sum().backward()
    assert (out.float() - ref).abs().max() < 0.03
    for mine, want in ((qb, q32), (kb, k32), (vb, v32)):
        assert (mine.grad.float() - want.grad).abs().max() < 0.05 * want.grad.abs().max()
    # without the segments, the same row is one sequence: the later examples see the earlier ones
    whole, _ = attention.attention(Layer(), qb, kb, vb, None, scaling=0.3)
    assert (whole.float() - ref)[:, 13:].abs().max() > 0.1


class Enc:
    def __init__(self, n):
        self.input_ids, self.labels = list(range(n)), list(range(n))


def test_packs_fill_rows_with_whole_examples_up_to_the_budget():
    enc = [Enc(n) for n in (500, 300, 200, 700, 100, 64, 1000)]
    rows = batching.packs(enc, list(range(len(enc))), 1024, 64)
    assert sorted(i for r in rows for i in r) == list(range(len(enc)))
    width = [batching.padded_width(sum(len(enc[i].input_ids) for i in r), 64) for r in rows]
    assert max(width) <= 1024
    # first fit, longest first: 1000 | 700 + 300 | 500 + 200 + 100 + 64 (864 → 896)
    assert rows == [[6], [3, 1], [0, 2, 4, 5]]
    ids, labels, bounds = batching.collate_packed(enc, rows[1], pad_id=9, bucket=64)
    assert ids.shape == labels.shape == (1, 1024) and bounds == ((0, 700), (700, 1024))
    assert ids[0, :700].tolist() == list(range(700)) and ids[0, 700:1000].tolist() == list(range(300))
    assert set(ids[0, 1000:].tolist()) == {9} and set(labels[0, 1000:].tolist()) == {IGNORE}
    # each example's first token is not a target: it would be predicted from the example before
    assert labels[0, 700] == IGNORE and labels[0, 701:1000].tolist() == list(range(1, 300))


@cpu_only
@pytest.mark.parametrize("family", ["llama", "gemma3", "phi4mini"])
def test_a_packed_row_has_the_loss_and_gradients_of_its_examples_alone(family):
    """gemma3's sliding-window layers take SDPA with transformers' packed mask; the rest the segments."""
    from peft import LoraConfig, get_peft_model

    tok = make_tokenizer(family)
    model = make_model(family, tok, max_position_embeddings=512).to(torch.bfloat16)
    model.set_attn_implementation(attention.register())
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    enc = [encode_chat(tok, ex["messages"]) for ex in toy_examples(3)]
    grads = []
    for packed in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if packed:
                ids, labels, bounds = batching.collate_packed(enc, [0, 1, 2], tok.pad_token_id, 64)
                total, n = answer_loss_sum(model, ids, None, labels, bounds)
            else:
                total, n = 0.0, 0
                for i in range(3):
                    ids, mask, labels = batching.collate(enc, [i], tok.pad_token_id)
                    one, m = answer_loss_sum(model, ids, mask, labels)
                    total, n = total + one, n + m
        total.backward()
        grads.append((float(total), n, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (alone, n_alone, g_alone), (packed, n_packed, g_packed) = grads
    assert n_packed == n_alone == sum(batching.n_answer_tokens(enc, [i]) for i in range(3))
    assert abs(packed - alone) < 0.01 * alone, (packed, alone)
    for a, b in zip(g_alone, g_packed):
        assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-6


@cpu_only
def test_bf16_training_packs_examples_into_one_row_per_pass(tiny_model_dir, tmp_path, monkeypatch):
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(16))
    write_jsonl(d / "val.jsonl", toy_examples(4, seed=1))
    rows = []
    real = batching.collate_packed
    monkeypatch.setattr(
        batching, "collate_packed", lambda enc, idx, *a: rows.append(len(idx)) or real(enc, idx, *a)
    )
    cfg = TrainConfig(
        model=str(tiny_model_dir("llama")), data=str(d), out=str(tmp_path / "run"), epochs=1, lr=5e-3,
        batch_size=8, micro_batch_size=0, precision="bf16", seed=0,
    )  # fmt: skip
    r = trainer.train(cfg, quiet=True)
    # the 4 validation examples in one row before and after training; 2 steps of 8 short examples, a row each
    assert rows == [4, 8, 8, 4]
    assert r.val_losses[-1] < r.val_loss_start


def test_pass_tokens_sizes_the_automatic_passes(monkeypatch):
    from tunesmith.errors import UserError
    from tunesmith.train import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.token_budget(TrainConfig(precision="bf16")) == precision.TOKEN_BUDGET == 1024
    assert precision.token_budget(TrainConfig(precision="bf16", pass_tokens=2048)) == 2048
    assert precision.token_budget(TrainConfig(precision="fp32", pass_tokens=2048)) == 0  # fp32: one example
    for bad in (dict(pass_tokens=-1), dict(pass_tokens=512, micro_batch_size=2)):
        with pytest.raises(UserError, match=r"^--pass-tokens .*only with --micro-batch-size 0"):
            TrainConfig(precision="bf16", **bad).validate()
