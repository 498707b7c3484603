"""Activations recomputed in the backward pass instead of kept: less memory for bf16 training on a CPU.

With the base model in bf16, every RMS norm casts its bf16 input to fp32, and autograd keeps that
fp32 copy for the backward pass: 76 MB of the 403 MB of activations a 576-token SmolLM2-135M
sequence keeps (2 norms × 30 layers × 576 × 576 × 4 bytes). The norm below keeps the bf16 input
and the per-row scale instead and recomputes the rest: half the memory, and no slower (a generic
checkpoint of the module did the same but cost 7 % of a training step in its own bookkeeping).
The forward pass is the model's own arithmetic, op for op, so the outputs are identical; the
gradient is the same formula in fp32, rounded to bf16 as before (within one bf16 step).

Only the norms whose code is known are replaced, each with its formula: Llama's (also Qwen 2/3,
Phi-3, Mistral) multiplies by the weight after the cast to bf16; Gemma's by (1 + weight) before.
"""

from __future__ import annotations

import functools

LLAMA_STYLE = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm", "MistralRMSNorm"}
GEMMA_STYLE = {"GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm"}


@functools.cache
def _function():
    import torch

    class RMSNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, eps: float, gemma: bool):
            x32 = x.float()
            r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
            ctx.save_for_backward(x, r, weight)
            ctx.gemma = gemma
            if gemma:
                return (x32 * r * (1.0 + weight.float())).type_as(x)
            return weight * (x32 * r).to(x.dtype)

        @staticmethod
        def backward(ctx, grad):
            x, r, weight = ctx.saved_tensors
            g = grad.float() * (1.0 + weight.float()) if ctx.gemma else (grad * weight).float()
            xhat = x.float() * r
            return (r * (g - xhat * (g * xhat).mean(-1, keepdim=True))).to(x.dtype), None, None, None

    return RMSNorm


def norms(model) -> int:
    """Give every frozen RMS norm of a known family in `model` the lean backward pass; returns how many."""
    import torch

    count = 0
    for module in model.modules():
        name = type(module).__name__
        if name not in LLAMA_STYLE | GEMMA_STYLE or module.weight.requires_grad:
            continue
        eps = module.variance_epsilon if name in LLAMA_STYLE else module.eps

        def forward(x, _module=module, _eps=eps, _gemma=name in GEMMA_STYLE, _forward=module.forward):
            if torch.is_grad_enabled() and x.requires_grad:
                return _function().apply(x, _module.weight, _eps, _gemma)
            return _forward(x)

        module.forward = forward
        count += 1
    return count
