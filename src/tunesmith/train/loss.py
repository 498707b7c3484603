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
