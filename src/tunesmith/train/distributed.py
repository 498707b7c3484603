"""Several processes or machines through PyTorch's own engine: launch with `torchrun` (or
`accelerate launch`, which sets the same environment); we use torch.distributed and DDP.

Each optimizer step's examples are dealt out across the ranks; every rank normalizes by the
answer tokens of the whole step, and DDP sums the gradients (its average, times the world
size), so N processes compute the same update as one process with the same global batch.
Rank 0 alone writes files.
"""

from __future__ import annotations

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

    def forward(self, ids, mask, labels):
        return self.loss_fn(self.model, ids, mask, labels)[0]


def wrap(model, loss_fn):
    module = LossModule(model, loss_fn)
    if world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    dev = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return DistributedDataParallel(module, device_ids=dev)


def shard(items: list, rank: int, size: int) -> list:
    return items[rank::size]
