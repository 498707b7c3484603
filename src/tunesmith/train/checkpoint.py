"""Training checkpoints: everything needed to continue a run exactly, without pickle.

A checkpoint directory holds `state.safetensors` (trainable weights, optimizer moments, RNG
states) and `state.json` (optimizer hyper-parameters, scheduler, data position, history).
Each is written to a temporary directory and renamed, so a kill at any moment leaves either
the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from tunesmith.errors import UserError, disk_full
from tunesmith.files.atomic import make_temp_dir, replace_dir
from tunesmith.files.faults import killpoint
from tunesmith.train.distributed import full, full_state, sharded

PREFIX = "step-"


def trainable_state(model) -> dict:
    return {n: p.contiguous() for n, p in full_state(model, trainable_only=True).items()}


def save(ckpt_dir: Path, model, opt, sched, progress: dict, write: bool = True) -> None:
    """Under FSDP every rank calls this (weights and optimizer moments are gathered whole, so a
    checkpoint does not depend on the number of processes); `write` says which rank writes."""
    import torch
    from safetensors.torch import save_file

    if not write and not sharded(model):
        return
    tensors = {f"param.{n}": t for n, t in trainable_state(model).items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = (
                full(v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
            )
    if not write:
        return
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {
        "progress": progress,
        "param_groups": osd["param_groups"],
        "scheduler": sched.state_dict(),
        "python_random": _jsonable(random.getstate()),
    }
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(ckpt_dir)
    try:
        save_file(tensors, str(tmp / "state.safetensors"))
        killpoint("checkpoint.file")
        (tmp / "state.json").write_text(json.dumps(meta))
        killpoint("checkpoint.written")
        replace_dir(tmp, ckpt_dir)
    except Exception as e:
        if not disk_full(e):
            raise
        need = sum(t.numel() * t.element_size() for t in tensors.values())
        free = shutil.disk_usage(ckpt_dir.parent).free
        last = latest(ckpt_dir.parent)
        kept = f"the last good checkpoint, {last}, is intact" if last else "no earlier checkpoint exists"
        raise UserError(
            f"{ckpt_dir.parent}: disk full while writing a checkpoint (needs about {need / 2**20:,.0f} MB, "
            f"{free / 2**20:,.0f} MB free); {kept}; free some space, then `tunesmith train --resume`"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    killpoint("checkpoint.saved")


def load(ckpt_dir: Path, model, opt, sched) -> dict:
    """Restore weights, optimizer, scheduler and RNG; returns the saved progress."""
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(ckpt_dir / "state.safetensors"))
        meta = json.loads((ckpt_dir / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"{ckpt_dir}: checkpoint unreadable ({e}); delete it to resume from the one before"
        ) from None
    params = dict(model.named_parameters())
    for key, t in tensors.items():
        if key.startswith("param."):
            name = key[len("param.") :]
            if name not in params:
                raise UserError(
                    f"{ckpt_dir}: checkpoint has weight {name!r} that this model lacks; was the run's model "
                    "changed?"
                )
            with torch.no_grad():
                params[name].copy_(like(params[name], t))
    state: dict[int, dict] = {}
    ordered = [p for g in opt.param_groups for p in g["params"]]
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, idx, k = key.split(".", 2)
            p = ordered[int(idx)]
            state.setdefault(int(idx), {})[k] = like(p, t) if t.shape == p.shape else t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tuples(meta["python_random"]))
    return meta["progress"]


def like(param, t):
    """A whole saved tensor in the form of `param`: sharded the same way under FSDP."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        return distribute_tensor(t.to(param.dtype), param.device_mesh, param.placements)
    return t


def latest(ckpt_root: Path) -> Path | None:
    found = (
        sorted(p for p in ckpt_root.glob(f"{PREFIX}*") if (p / "state.json").is_file())
        if ckpt_root.is_dir()
        else []
    )
    return found[-1] if found else None


def prune(ckpt_root: Path, keep: int) -> None:
    found = sorted(p for p in ckpt_root.glob(f"{PREFIX}*") if p.is_dir())
    for p in found[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x
