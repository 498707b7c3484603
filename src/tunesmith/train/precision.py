"""The precision plan of a run: where autocast runs, which dtype holds the frozen base, how batches
are padded and how many tokens a forward pass holds. Every function reads only the config (and
whether a GPU is there), so the same answer comes back at every call."""

from __future__ import annotations

import contextlib

from tunesmith.models.loading import default_dtype
from tunesmith.train.config import TrainConfig


def autocast_device(cfg: TrainConfig) -> str | None:
    """Where the forward pass runs under bf16 autocast, or None. Under it the trainable weights, their
    gradients and AdamW stay fp32 (pure bf16 weights round most updates away), as HF Trainer's bf16=True.
    "cpu": --precision bf16 on a CPU, fast where it multiplies bf16 natively (AVX512-BF16, AMX).
    "cuda": bf16 on a GPU (--precision bf16, or auto on a GPU that has it). Not QLoRA: bitsandbytes
    computes in its own compute dtype."""
    import torch

    if not torch.cuda.is_available():
        return "cpu" if cfg.precision == "bf16" else None
    if cfg.method == "qlora":
        return None
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and default_dtype() == torch.bfloat16)
    return "cuda" if bf16 else None


def cpu_autocast(cfg: TrainConfig) -> bool:
    """bf16 training on a CPU, where attention, padding and norms take the CPU's fast, lean paths."""
    return autocast_device(cfg) == "cpu"


def bucket_size(cfg: TrainConfig) -> int:
    """Under CPU bf16, batches are padded to a multiple of 64 tokens (see collate)."""
    return 64 if cpu_autocast(cfg) else 0


# Under CPU bf16 a short sequence leaves the CPU idle: one LoRA pass of SmolLM2-135M ran 273 tokens/s at
# 128 tokens, 353 at 256, 381 at 448, but 4 × 128 tokens in one pass 432 and 2 × 256 420 (2-core EPYC,
# AVX512-BF16): oneDNN's bf16 matmuls want many rows, while attention's cost grows with each row's
# length. So auto passes are filled up to this many tokens: whole examples packed end to end in one row
# (batching.packs), or, for prompt/prefix tuning, padded rows of similar length capped at the longest
# example's width. Packing against the padded rows (capped at 704 tokens on the example data), the same
# steps alternated in one process: +11.6 % tokens/s, losses equal to 0.03 %. The budget trades speed for
# memory (whole example-data runs, tokens/s and peak RSS; TRL's best setting peaks at ~3.4 GB):
# 1024: 355, 2,312 MiB; 1536: 399, 2,851 MiB; 2048: 454, 3,350 MiB (benchmarks/RESULTS.md, issue 35).
# 1024 is the default that stays under 0.7× TRL's memory; --pass-tokens picks another.
TOKEN_BUDGET = 1024


def token_budget(cfg: TrainConfig) -> int:
    """Padded tokens per forward pass when --micro-batch-size is 0 (auto) under CPU bf16 (not FSDP, whose
    ranks must run as many passes), else 0: a fixed number of examples per pass."""
    if cfg.micro_batch_size or not cpu_autocast(cfg) or cfg.fsdp:
        return 0
    return cfg.pass_tokens or TOKEN_BUDGET


def packing(cfg: TrainConfig) -> bool:
    """Whether the token-budget passes (token_budget) hold one row of whole examples end to end instead of
    a padded row each (batching.packs). Not prompt/prefix tuning, whose virtual tokens come before the
    row."""
    return bool(token_budget(cfg)) and cfg.method not in ("prompt-tuning", "prefix-tuning")


def frozen_base_bf16(cfg: TrainConfig) -> bool:
    """Adapter methods under autocast keep the frozen base in bf16: half the memory, and no cast of
    every weight at every use. Not for full/freeze (their saved model would mix dtypes) nor FSDP (it
    shards a unit's parameters as one flat tensor of one dtype)."""
    return cfg.method in ("lora", "dora", "prompt-tuning", "prefix-tuning") and not cfg.fsdp


def amp(device: str | None, model):
    """The forward pass's precision context for `device` = autocast_device(cfg), worked out once per run:
    bf16 autocast there, with PEFT's cast of each adapter layer's input to the adapter's fp32 switched off
    (autocast multiplies in bf16 anyway, the cast was a wasted copy, and its fp32 result was what autograd
    kept); None: a no-op."""
    import torch

    if device is None:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device, dtype=torch.bfloat16))
    stack.enter_context(disable_input_dtype_casting(model))
    return stack
