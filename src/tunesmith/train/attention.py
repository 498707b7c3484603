"""Causal self-attention for bf16 training on a CPU: block-causal, never the whole T×T score matrix.

PyTorch's CPU flash-attention kernel (what SDPA runs) gains nothing from bf16: on a 2-core
AVX512-BF16 EPYC its backward runs at ~65 GFLOP/s, a sixth of the bf16 matmul peak. Multiplying
attention out as bf16 batched matmuls is faster, but over the full T×T scores half of the work is
masked away and the softmax over them was the step's largest loss after the matmuls (issue 35).
So the queries go in blocks of CHUNK positions, each against the keys up to its own end: the
scores of the keys after it are never computed, and the mask touches only the block's diagonal
square. GQA folds each key/value head's query heads into the rows (row i·g + j: position i, query
head j), with no repeat of K and V. The probabilities are not kept for the backward pass: it
recomputes each block's from Q and K (which it needs anyway). A row of packed examples
(batching.collate_packed) passes their bounds: a block's keys then start at its own example's start,
so no example sees another, and no score across two of them is computed.

Forward + backward of one SmolLM2 layer (9 query heads, 3 key/value heads), bf16, median of 15, the
2-core EPYC with avx512_bf16 (benchmarks/RESULTS.md, issue 35 part 2), ms:

    tokens             256    384    512    768   1024   2048
    SDPA              5.6   10.0   15.5   22.0   37.7    121
    full T×T scores   3.3    6.6   11.5-16    -      -      -
    blocks of 128     2.7    4.7    6.8   14.7   28.4     91

Blocks of 64 and 96 were as fast at ≤ 512 tokens and slower beyond; 192 and 256 slower below 1024.
In a whole bf16 LoRA step of the example data, attention's self time fell from 8.5 to 5.6 s (3 steps).
fp32 stays on SDPA (with torch held to AVX2 kernels, blocks of 64-256 measured 13-19 ms at 512
tokens against SDPA's 16.6, and slower at 1024): so does everything this does not cover (padding
masks, sliding windows, softcapping, dropout, decoding with a cache).
"""

from __future__ import annotations

import functools

NAME = "tunesmith_bf16"
SEGMENTS = "tunesmith_segments"  # the keyword that carries a packed row's (start, end) bounds to attention()
CHUNK = 128  # query positions per block


def _blocks(segments) -> tuple:
    """(a, s, e) for each block of queries s..e of each segment a..b: keys a..e are its keys."""
    return tuple((a, s, min(s + CHUNK, b)) for a, b in segments for s in range(a, b, CHUNK))


@functools.lru_cache(maxsize=8)
def _mask(c: int, g: int, dtype):
    """−inf above the diagonal of a c×c block, each row repeated for the g query heads of a key head."""
    import torch

    return torch.full((c, c), float("-inf"), dtype=dtype).triu(1).repeat_interleave(g, 0)


def _probs(q, k, a: int, s: int, e: int, g: int):
    """softmax over keys a..e of the queries at positions s..e (rows s·g..e·g)."""
    import torch

    scores = torch.bmm(q[:, s * g : e * g], k[:, a:e].transpose(1, 2))
    scores[:, :, s - a :].add_(_mask(e - s, g, q.dtype))  # in place: `+=` on a slice copies it back
    return torch.softmax(scores, dim=-1)


@functools.cache
def _function():
    import torch

    class Attention(torch.autograd.Function):
        """softmax(q kᵀ, causal within each segment) v by blocks of queries, saving q, k, v only."""

        @staticmethod
        def forward(ctx, q, k, v, g, blocks):  # q [n, t·g, d] position-major; k, v [n, t, d]
            out = torch.empty_like(q)
            for a, s, e in blocks:
                torch.bmm(_probs(q, k, a, s, e, g), v[:, a:e], out=out[:, s * g : e * g])
            ctx.save_for_backward(q, k, v)
            ctx.g, ctx.blocks = g, blocks
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v = ctx.saved_tensors
            g, grad = ctx.g, grad.contiguous()
            dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
            for a, s, e in ctx.blocks:
                rows = slice(s * g, e * g)
                p = _probs(q, k, a, s, e, g)
                dv[:, a:e].baddbmm_(p.transpose(1, 2), grad[:, rows])
                ds = torch._softmax_backward_data(
                    torch.bmm(grad[:, rows], v[:, a:e].transpose(1, 2)), p, -1, p.dtype
                )
                del p
                torch.bmm(ds, k[:, a:e], out=dq[:, rows])
                dk[:, a:e].baddbmm_(ds.transpose(1, 2), q[:, rows])
            return dq, dk, dv, None, None

    return Attention


def attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, t, d = query.shape
    # packed rows (batching.py): the segments' bounds, whose block-diagonal causal mask transformers built
    segments = kwargs.pop(SEGMENTS, None)
    if (
        (attention_mask is None or (segments is not None and b == 1))
        and key.shape[2] == t
        and t > 1
        and query.dtype == torch.bfloat16
        and dropout == 0.0
        and kwargs.get("softcap") is None
        and not getattr(module, "sliding_window", None)
        and is_causal is not False
        and getattr(module, "is_causal", True)
    ):
        hk = key.shape[1]
        g = h // hk  # query heads per key/value head: head i uses key/value head i // g
        scale = scaling if scaling is not None else d**-0.5
        # [b, h, t, d] -> [b·hk, t·g, d], position-major, so a block of positions is a block of rows
        q = (query * scale).view(b, hk, g, t, d).transpose(2, 3).reshape(b * hk, t * g, d)
        blocks = _blocks(segments if segments is not None else ((0, t),))
        out = _function().apply(q, key.reshape(b * hk, t, d), value.reshape(b * hk, t, d), g, blocks)
        return out.view(b, hk, t, g, d).permute(0, 2, 1, 3, 4).reshape(b, t, h, d), None
    return sdpa_attention_forward(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        is_causal=is_causal,
        **kwargs,
    )


@functools.cache
def register() -> str:
    """Make the attention known to transformers (once); returns the name to set on a model."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    # the same masks as SDPA: none at all for unpadded batches
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
