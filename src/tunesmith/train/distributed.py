"""Several processes or machines through PyTorch's own engine: launch with `torchrun` (or
`accelerate launch`, which sets the same environment); we use torch.distributed with DDP, or
with FSDP2 (`fully_shard`, `--fsdp`) when the model, its gradients and optimizer state must be
split across devices.

Each optimizer step's examples are dealt out across the ranks; every rank normalizes by the
answer tokens of the whole step, and DDP/FSDP sum the gradients (their average, times the world
size), so N processes compute the same update as one process with the same global batch.
Rank 0 alone writes files; under FSDP every rank first takes part in gathering the weights.
"""

from __future__ import annotations

import contextlib
import os

import torch


def world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init() -> None:
    rank, size = world()
    if size == 1 or torch.distributed.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (identity in one process)."""
    if not torch.distributed.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if torch.cuda.is_available():
        t = t.cuda()
    torch.distributed.all_reduce(t)
    return t.tolist()


class LossModule(torch.nn.Module):
    """Wraps the model so DDP sees the forward pass that computes our answer-only loss."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, ids, mask, labels, segments=None):
        return self.loss_fn(self.model, ids, mask, labels, segments)[0]


def wrap(model, loss_fn, fsdp: bool = False):
    """The loss module to call in training: DDP around it, or (fsdp) the model sharded in place.
    Build the optimizer after this: FSDP replaces the parameters with sharded ones."""
    module = LossModule(model, loss_fn)
    if world()[1] == 1:
        return module
    if fsdp:
        shard_model(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    dev = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return DistributedDataParallel(module, device_ids=dev)


def shard_model(module: LossModule) -> None:
    """FSDP2: each transformer block is one unit (gathered just before it runs, freed after);
    the rest (embeddings, final norm, output layer) belong to the root, the loss module, whose
    forward is what calls them (the answer-only loss runs the decoder and the output layer
    separately, so a root on the model itself would never be gathered)."""
    from torch.distributed.fsdp import fully_shard

    model = module.model
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(inner, "_no_split_modules", None) or [])
    for m in model.modules():
        if type(m).__name__ in blocks:
            fully_shard(m)
    fully_shard(module)


def sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def accumulating(module, last: bool):
    """Gradient accumulation: skip the gradient exchange on all but the last micro-batch of a step."""
    if last or world()[1] == 1:
        return contextlib.nullcontext()
    if hasattr(module, "no_sync"):  # DDP
        return module.no_sync()
    module.set_requires_gradient_sync(False)  # FSDP2; turned back on for the last micro-batch

    @contextlib.contextmanager
    def off():
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

    return off()


def full(t):
    """A whole tensor from a sharded one (a collective: every rank must call it), else itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(model, trainable_only: bool) -> dict:
    """{name: whole tensor on the CPU}: the trainable parameters, or the whole state dict.
    Under FSDP every rank must call this (it gathers); plain tensors are only copied."""
    items = (
        [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if trainable_only
        else list(model.state_dict(keep_vars=True).items())
    )
    seen: set[int] = set()
    out = {}
    for n, t in items:
        if id(t) not in seen:  # a tied weight (output layer = embeddings) is saved once, as the model would
            seen.add(id(t))
            out[n] = full(t.detach()).cpu()
    return out


def shard(items: list, rank: int, size: int) -> list:
    return items[rank::size]
