"""Cross-entropy of the output layer at the answer positions, in blocks of a fixed number of rows.

The plain way materializes the logits of every answer position at once, in fp32, and autograd
keeps their log-softmax for the backward pass: answers × vocabulary × 4 bytes, twice or three
times over (SmolLM2: 49,152 entries, 23 MB for a 120-token answer; Gemma 3: 262,144). Those
buffers have a new size for every example, and on a CPU that is what fragments the heap: peak
RSS crept up through a whole run although no single step needed more. Here the logits exist one
block of BLOCK rows at a time, and since the output layer is frozen (adapter methods), the
gradient with respect to the hidden states is computed with them in the forward pass (softmax −
one-hot, times the weight) and only that [answers × hidden] tensor is kept. The FLOPs are the
same: one product for the logits, one for the gradient.
"""

from __future__ import annotations

import functools

from tunesmith.models.chat import IGNORE
from tunesmith.train.attention import SEGMENTS

BLOCK = 64  # answer positions per block: 64 × 49,152 fp32 logits = 12.6 MB for SmolLM2


@functools.cache
def _function():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets):  # hidden [n, d], weight [V, d] (frozen), targets [n]
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            for s in range(0, hidden.shape[0], BLOCK):
                logits = (hidden[s : s + BLOCK] @ weight.t()).float()
                t = targets[s : s + BLOCK, None]
                lse = torch.logsumexp(logits, dim=-1, keepdim=True)
                total += (lse - logits.gather(1, t)).sum()
                if grad is not None:
                    p = logits.sub_(lse).exp_()
                    p.scatter_add_(1, t, torch.full_like(t, -1, dtype=p.dtype))
                    grad[s : s + BLOCK] = p.to(weight.dtype) @ weight
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, grad_total):
            (grad,) = ctx.saved_tensors
            return grad * grad_total.to(grad.dtype), None, None

    return LinearCrossEntropy


def linear_cross_entropy_sum(hidden, weight, targets):
    """Σ cross-entropy(hidden @ weightᵀ, targets) over the rows; the weight must not need a gradient."""
    return _function().apply(hidden, weight, targets)


# ---------------------------------------------------------------- the loss on answer tokens


def _prompt_learning(model) -> bool:
    return (
        getattr(model, "active_peft_config", None) is not None and model.active_peft_config.is_prompt_learning
    )


def answer_logits(model, ids, mask, labels, project: bool = True, segments=None):
    """Logits at the answer positions only (the output layer runs nowhere else), their target
    ids, and the [batch, length - 1] mask of where they are. With project=False: the hidden
    states at those positions instead of the logits. `segments`: ids is one packed row of
    examples at these (start, end) bounds (batching.collate_packed; mask None), each given its
    own positions from 0, and the attention keeps each to itself."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    dev = next(inner.parameters()).device
    ids, labels = ids.to(dev), labels.to(dev)
    targets = labels[:, 1:]
    sel = targets != IGNORE
    if segments is not None:
        pos = torch.cat([torch.arange(e - s) for s, e in segments])[None].to(dev)
        # no cache: with one, transformers would not build the packed row's mask (for SDPA's layers)
        kwargs = {"position_ids": pos, "use_cache": False, SEGMENTS: segments}
    else:
        kwargs = {"attention_mask": mask.to(dev)}
    if _prompt_learning(model):
        # prompt/prefix tuning add virtual tokens in PeftModel.forward: use it, keep the real positions
        logits = model(input_ids=ids, **kwargs).logits[:, -ids.shape[1] :]
        return logits[:, :-1][sel].float(), targets[sel], sel
    hidden = inner.get_decoder()(input_ids=ids, **kwargs).last_hidden_state[:, :-1][sel]
    if not project:
        return hidden, targets[sel], sel
    logits = inner.get_output_embeddings()(hidden).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = (logits / cap).tanh() * cap
    return logits, targets[sel], sel


def frozen_output_layer(model):
    """The output layer's weight when the loss can be computed block by block (loss.py): frozen, no bias,
    no logit softcapping, no virtual tokens; else None."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = inner.get_output_embeddings()
    if (
        _prompt_learning(model)
        or getattr(inner.config, "final_logit_softcapping", None)
        or type(out) is not torch.nn.Linear
        or out.bias is not None
        or out.weight.requires_grad
    ):
        return None
    return out.weight


def answer_loss_sum(model, ids, mask, labels, segments=None):
    """Sum of cross-entropy over answer tokens, and how many there are (`segments`: answer_logits)."""
    import torch.nn.functional as F

    weight = frozen_output_layer(model)
    if weight is not None:
        hidden, targets, sel = answer_logits(model, ids, mask, labels, project=False, segments=segments)
        return linear_cross_entropy_sum(hidden, weight, targets), int(sel.sum())
    logits, targets, sel = answer_logits(model, ids, mask, labels, segments=segments)
    return F.cross_entropy(logits, targets, reduction="sum"), int(sel.sum())
