"""`train(cfg)`: one call trains any method, setup -> fit -> finish, in one readable path.

The run directory rules (rundir.py) come first: a checked --out, a `.partial` work dir swapped into
place at the end, and on --resume the latest checkpoint with the data checked against the run's.
Then the method builds its model and data (sft.py, dpo.py, grpo.py: the table below; classify.py for
--task), the run's
resolved config is recorded, and the harness (run.py) fits and finishes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.registry import db as registry
from tunesmith.registry import runfolder, tracking
from tunesmith.registry.recorder import Recorder
from tunesmith.train import checkpoint, heap, plan_text, rundir
from tunesmith.train import distributed as dist
from tunesmith.train.classify import Classify
from tunesmith.train.config import TrainConfig
from tunesmith.train.dpo import Dpo
from tunesmith.train.grpo import Grpo
from tunesmith.train.run import Run
from tunesmith.train.sft import Sft

METHODS = {"dpo": Dpo, "grpo": Grpo}  # every other --method is SFT, with its adapter or trainable selection


def train(
    cfg: TrainConfig,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    trust_remote_code: bool = False,
    resume: bool = False,
    allow_changed_data: bool = False,
    config_file: str | None = None,
    registry_path: str | None = None,
    track: str | None = None,
    on_validation=None,
    fit_check: bool = True,
):
    """Train `cfg` into cfg.out; returns the method's result (sft.Result, or preference.PrefResult). The run
    is entered in the registry (`registry_path`, default `$TUNESMITH_HOME/registry.db`, "off": none) when it
    starts and from its directory when it ends; a registry that fails is skipped with a warning."""
    import torch

    if not cfg.data and not cfg.documents:
        raise UserError(
            "--data is required (a folder with train.jsonl and val.jsonl, or a file), or --documents FOLDER"
        )
    if not cfg.out:
        raise UserError("--out is required: the run directory to create")
    kind = Classify if cfg.task != "generate" else METHODS.get(cfg.method, Sft)
    if cfg.low_memory and not heap.lean():
        raise UserError(
            "--low-memory tunes glibc's allocator (Linux), which this system does not have: drop it, or "
            "lower the peak with --gradient-checkpointing"
        )
    dist.init()
    lead, processes = dist.world()[0] == 0, dist.world()[1]
    if cfg.fsdp and processes == 1:
        raise UserError(
            "--fsdp shards the model across processes, and this is one process: launch with "
            "`torchrun --nproc_per_node N -m tunesmith.cli train ...` (N ≥ 2), or drop --fsdp"
        )
    if kind is not Sft and processes > 1:
        raise UserError(f"--method {cfg.method} trains in one process; launch it without torchrun")
    out, work = rundir.begin(cfg, overwrite=overwrite, resume=resume, config_file=config_file, lead=lead)
    ckpt = checkpoint.latest(work / "checkpoints") if resume else None
    if ckpt is not None:
        data_print = rundir.check_data(work, cfg, ckpt, allow_changed_data, write=lead)
    else:  # a new run, or one killed before its first checkpoint: (re)start it with its saved config
        data_print = rundir.fingerprint(cfg)
        if resume and not quiet:
            print(f"{work}: no checkpoint yet; starting the run over with its saved config", file=sys.stderr)
    rundir.check_disk(out, cfg)
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'tunesmith[tensorboard]'")
    tracking.check(track)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    planned = None
    if lead and processes == 1:  # --out checked, nothing loaded or written yet
        planned = plan_text.before_training(
            cfg, quiet=quiet, fit_check=fit_check, trust_remote_code=trust_remote_code
        )
    # the data the plan tokenized, trained on as it is
    encoded = {"encoded": planned.data.encoded} if planned and kind is Sft else {}
    method = kind(
        cfg,
        trust_remote_code=trust_remote_code,
        quiet=quiet,
        resumed_from=ckpt.name if ckpt else None,
        **encoded,
    )
    cfg = method.cfg  # resolved (the automatic micro-batch size filled in): what config.yaml records
    run_id = (rundir.run_id_of(work) if resume else None) or registry.new_id()
    dist.barrier()  # every rank has checked --out before rank 0 creates the run directory
    if lead and ckpt is None:
        rundir.record(work, cfg, data_print, run_id)
    dist.barrier()
    run = Run(cfg, work, method, quiet=quiet, lead=lead, resume=ckpt, on_validation=on_validation)
    rec = Recorder(registry_path, off=not lead)
    result = fit_and_register(run, method, rec, run_id, out, data_print)
    if lead and track:
        tracking.log_run(track, runfolder.read_run_dir(out))
    return result


def fit_and_register(run: Run, method, rec: Recorder, run_id: str, out: Path, data_print: list[dict]):
    """Fit and finish the run, entered in the registry as running, then done (read back from the run
    directory), failed or interrupted."""
    cfg, name = run.cfg, out.resolve().name
    model_sha = runfolder.model_sha256(method.model_dir) if not rec.off else None
    rec.begin(
        run_id,
        kind="train",
        name=name,
        path=str(out.resolve()),
        method=cfg.method,
        model=cfg.model,
        model_sha256=model_sha,
        config=json.loads(json.dumps(cfg.__dict__)),
        data=data_print,
        parents=[("from-adapter", str(Path(cfg.from_adapter).resolve()))] if cfg.from_adapter else [],
    )
    try:
        run.fit()
        about = {
            "run_id": run_id,
            "name": name,
            "started": rundir.started_at(run.work),
            "ended": time.time(),
            "model_sha256": model_sha,
            "environment": runfolder.environment(),
            "examples": {"train": method.n_items, "val": method.n_val},
            **getattr(method, "about", {}),  # the method's own (sft.py with --documents: the documents' hash)
        }
        result = run.finish(out, method.model_dir, about)
    except KeyboardInterrupt:
        rec.end(run_id, "interrupted")
        raise
    except BaseException as e:
        rec.end(run_id, "failed", error=(str(e).splitlines() or [type(e).__name__])[0])
        raise
    rec.record_run_dir(out)
    rec.close()
    return result
