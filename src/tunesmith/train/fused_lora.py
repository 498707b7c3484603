"""A LoRA linear layer's forward and backward as one autograd function: fewer full-size elementwise ops.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: a multiply and an add over the whole
[tokens × out] output in the forward pass, and the multiply's backward over it again, for each of a
layer's 7 adapted linears. Here the scaling multiplies the [tokens × r] product x·Aᵀ instead (r = 16
against out = 576-1536 for SmolLM2), and the low-rank term is added inside the base product's matmul
(`addmm_`, beta = 1), in the forward pass and in the backward pass to the input. The same products in
the same precision (bf16 under CPU autocast: A and B are cast per call, as autocast does), so the same
result up to where the scaling is rounded.

Only the plain case is taken: one active adapter, no dropout, no DoRA, not merged, a dense
nn.Linear base; anything else runs PEFT's own forward. Measured on the example data (2-core EPYC,
avx512_bf16; benchmarks/RESULTS.md, issue 35): the step's elementwise time 5.33 -> 3.89 s over 3 bf16
steps; alternating with PEFT's forward on the same batches, +7.2 % bf16 and +3.4 % fp32 on AVX2
kernels, so it serves both precisions.
"""

from __future__ import annotations

import functools


@functools.cache
def _function():
    import torch

    class LoraLinear(torch.autograd.Function):
        """x·Wᵀ (+ bias) + s·(x·Aᵀ)·Bᵀ, W and bias frozen; keeps x and the [tokens × r] x·Aᵀ."""

        @staticmethod
        def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float):
            x2 = x.reshape(-1, x.shape[-1])
            a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
            xa = torch.mm(x2, a.t()).mul_(scale)
            out = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias.to(x.dtype), x2, weight.t())
            out.addmm_(xa, b.t())
            ctx.save_for_backward(x, weight, a, b, xa)
            ctx.scale = scale
            return out.view(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, grad):
            x, weight, a, b, xa = ctx.saved_tensors
            g = grad.reshape(-1, grad.shape[-1]).to(x.dtype)
            gb = torch.mm(g, b).mul_(ctx.scale)  # [tokens × r]
            grad_x = torch.mm(g, weight).addmm_(gb, a)
            grad_a = torch.mm(gb.t(), x.reshape(-1, x.shape[-1])).float()
            grad_b = torch.mm(g.t(), xa).float()
            return grad_x.view_as(x), None, None, grad_a, grad_b, None

    return LoraLinear


def _plain(module) -> str | None:
    """The one active adapter's name when `module` can take the fused path, else None."""
    import torch

    active = module.active_adapters
    if module.disable_adapters or module.merged or len(active) != 1:
        return None
    name = active[0]
    if name not in module.lora_A or module.use_dora.get(name):
        return None
    if not isinstance(module.lora_dropout[name], torch.nn.Identity):
        return None
    return name


def apply(model) -> int:
    """Give every plain LoRA linear layer of `model` the fused forward while gradients are on; returns how
    many layers changed."""
    import torch
    from peft.tuners.lora import Linear

    count = 0
    for module in model.modules():
        if type(module) is not Linear or type(module.base_layer) is not torch.nn.Linear:
            continue

        def forward(x, *args, _m=module, _forward=module.forward, **kwargs):
            name = _plain(_m) if torch.is_grad_enabled() and not args and not kwargs else None
            if name is None or _m.base_layer.weight.dtype != x.dtype:
                return _forward(x, *args, **kwargs)
            base = _m.base_layer
            return _function().apply(
                x, base.weight, base.bias, _m.lora_A[name].weight, _m.lora_B[name].weight, _m.scaling[name]
            )

        module.forward = forward
        count += 1
    return count
