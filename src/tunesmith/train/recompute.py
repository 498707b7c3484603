"""Activations recomputed in the backward pass instead of kept: less memory for bf16 training on a CPU.

Measured on one 576-token SmolLM2-135M sequence (LoRA, bf16 base), what autograd keeps for the
backward pass: 574 MB as transformers and PEFT run it; 403 MB once attention recomputes its
probabilities (attention.py); 365 MB with the norms below; 314 MB with the gated MLPs below;
292 MB with the output layer's blockwise cross-entropy (loss.py).

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

GATED_MLPS = {"LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP", "Gemma3MLP"}  # down(act(gate(x)) * up(x))
FUSED_GATED_MLPS = {"Phi3MLP"}  # gate, up = gate_up(x).chunk(2); down(up * act(gate))
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


@functools.cache
def _gated():
    import torch

    class Gated(torch.autograd.Function):
        """act(gate) · up, keeping gate and up only (which the model keeps anyway): the backward pass
        recomputes act(gate) instead of keeping it, one [tokens × intermediate] tensor per layer (51 MB
        of a 576-token SmolLM2 sequence). The same ops as autograd's, in the same autocast state."""

        @staticmethod
        @torch.amp.custom_fwd(device_type="cpu")
        def forward(ctx, gate, up, act):
            ctx.save_for_backward(gate, up)
            ctx.act = act
            return act(gate) * up

        @staticmethod
        @torch.amp.custom_bwd(device_type="cpu")
        def backward(ctx, grad):
            gate, up = ctx.saved_tensors
            with torch.enable_grad():
                g = gate.detach().requires_grad_()
                a = ctx.act(g)
            (grad_gate,) = torch.autograd.grad(a, g, grad * up)
            return grad_gate, grad * a.detach(), None

    return Gated


def apply(model) -> int:
    """Give `model`'s frozen RMS norms and gated MLPs of known families the lean backward passes; returns
    how many modules changed."""
    return norms(model) + gated_mlps(model)


def gated_mlps(model) -> int:
    import torch

    count = 0
    for module in model.modules():
        name = type(module).__name__
        if name in GATED_MLPS:

            def forward(x, _m=module, _forward=module.forward):
                if torch.is_grad_enabled():
                    return _m.down_proj(_gated().apply(_m.gate_proj(x), _m.up_proj(x), _m.act_fn))
                return _forward(x)
        elif name in FUSED_GATED_MLPS:

            def forward(x, _m=module, _forward=module.forward):
                if torch.is_grad_enabled():
                    gate, up = _m.gate_up_proj(x).chunk(2, dim=-1)
                    return _m.down_proj(_gated().apply(gate, up, _m.activation_fn))
                return _forward(x)
        else:
            continue
        module.forward = forward
        count += 1
    return count


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
