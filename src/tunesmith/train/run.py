"""The run harness every training method shares: the log, the optimizer with its schedule and
clipping, checkpoints and resume, validation with best tracking and early stopping, and the finish.

SFT (sft.py), DPO (dpo.py) and GRPO (grpo.py) supply only what differs, the way mlx-lm's `train()`
takes a loss and callbacks: their items and each epoch's steps, one step's forward and backward
passes, and their evaluation (the `Method` protocol below). Before this module the preference loops
wrote the log, the optimizer, checkpoints and the finish a second time, each slightly differently;
a run registry, a review queue or a sweep now hooks into one place.

What a checkpoint saves is `State`, a typed record (a method's own state, such as DPO's reference
log-probabilities, rides in `State.extra`), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

from tunesmith.files.atomic import make_temp_dir, replace_dir, write_text
from tunesmith.files.faults import killpoint
from tunesmith.train import checkpoint, rundir
from tunesmith.train import distributed as dist
from tunesmith.train.config import ADAPTER_METHODS, TrainConfig
from tunesmith.train.progress import Progress, tensorboard_add, tensorboard_writer


@dataclass
class State:
    """A run's progress: what a checkpoint saves (state.json's "progress") and a resume restores."""

    step: int = 0
    epoch: int = 1
    step_in_epoch: int = 0  # steps of `epoch` done; > 0 in a checkpoint from inside an epoch
    tokens: int = 0
    answer_tokens: int = 0
    elapsed: float = 0.0  # wall time, across resumes
    train_s: float = 0.0  # time inside training steps: tokens/s counts this, not validation or checkpoints
    val_s: float = 0.0
    last_loss: float = float("nan")
    metric_lines: int = 0  # lines of metrics.jsonl written so far (a resume cuts the rest)
    start: dict = field(default_factory=dict)  # the validation before training
    vals: list[dict] = field(default_factory=list)  # every validation since
    best: dict | None = None  # the validation whose weights are in best/
    bad: int = 0  # validations in a row no better than the best (--patience)
    stopped: bool = False  # stopped early
    extra: dict = field(default_factory=dict)  # the method's own state

    @classmethod
    def from_dict(cls, d: dict) -> State:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class StepOut:
    """What one training step did (its backward passes ran; the optimizer step is the harness's)."""

    loss: float
    tokens: int  # tokens through the model (padding excluded)
    answer_tokens: int = 0
    record: dict = field(default_factory=dict)  # the method's numbers for metrics.jsonl, after "loss"


class Method(Protocol):
    """What a training method gives the harness."""

    cfg: TrainConfig  # resolved (e.g. the automatic micro-batch size filled in)
    model: object
    tok: object
    n_items: int  # training items (examples, pairs, prompts): steps per epoch = ceil(n_items / batch size)
    n_val: int  # validation items (none: no validation, the epoch's end says the train loss)
    goal: tuple[str, bool]  # the validation number that picks the best step, and whether higher is better
    bar: bool  # a progress bar (SFT), or a line per step (the preference methods)

    def plan(self, epoch: int) -> list: ...  # the epoch's steps, each what train_step takes
    def begin(
        self, state: State, resumed: bool
    ) -> None: ...  # before the first step (DPO: reference log-probs)
    def train_step(self, items, state: State) -> StepOut: ...  # forward and backward of one optimizer step
    def step_line(
        self, out: StepOut, state: State, total: int, speed: float, step_s: float
    ) -> str | None: ...
    def evaluate(self) -> dict: ...  # validation numbers, "val_loss" and the like
    def start_line(self, rec: dict) -> str: ...
    def val_line(self, rec: dict, state: State, mark: str) -> str: ...
    def epoch_line(self, epoch: int, state: State) -> str | None: ...  # an epoch's end without validation
    def end(self) -> None: ...  # after the last step, before the final save
    def result(self, state: State, run_dir: Path): ...  # what train() returns (and --json prints)


def better(rec: dict, best: dict | None, key: str, higher: bool) -> bool:
    """Whether a validation beats the best so far on the method's goal; a tie (accuracy on a few dozen
    examples ties often) goes to the lower validation loss, the more confident of equally right models."""
    if best is None:
        return True
    if rec[key] != best[key]:
        return rec[key] > best[key] if higher else rec[key] < best[key]
    return key != "val_loss" and rec.get("val_loss", math.inf) < best.get("val_loss", math.inf)


def lr_schedule(cfg: TrainConfig, total_steps: int):
    warmup = max(1, int(total_steps * cfg.warmup_ratio)) if cfg.warmup_ratio > 0 else 0

    def lr_at(step: int) -> float:  # multiplier of the peak learning rate
        if step < warmup:
            return (step + 1) / warmup
        prog = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.scheduler == "cosine":
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))
        return 1.0 - prog if cfg.scheduler == "linear" else 1.0

    return lr_at


def total_steps(cfg: TrainConfig, n_items: int) -> int:
    total = math.ceil(n_items / cfg.batch_size) * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def save_adapter(model, tok, where: Path, cfg: TrainConfig | None = None, write: bool = True) -> None:
    """The trainable part as a PEFT adapter directory (full/freeze: a model directory), written
    atomically. Under FSDP every rank calls this (the weights are gathered) and `write` says who writes."""
    state = None
    if dist.sharded(model):
        state = dist.full_state(model, trainable_only=cfg is None or cfg.method in ADAPTER_METHODS)
    if not write:
        return
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(where)
    try:
        model.save_pretrained(str(tmp), **({"state_dict": state} if state is not None else {}))
        tok.save_pretrained(str(tmp))
        replace_dir(tmp, where)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Log:
    """metrics.jsonl (rank 0 only) and --tensorboard. Resuming keeps what was logged up to the
    checkpoint and drops the rest, in both: TensorBoard hides events from the checkpoint's next step on."""

    def __init__(self, path: Path, cfg: TrainConfig, lead: bool, resumed: State | None):
        self.lines = resumed.metric_lines if resumed else 0
        if lead and resumed and path.exists():
            write_text(path, "".join(path.read_text().splitlines(keepends=True)[: self.lines]))
        self.f = open(path if lead else os.devnull, "a" if resumed else "w")
        self.tb = tensorboard_writer(cfg, purge_step=resumed.step + 1 if resumed else None)

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        tensorboard_add(self.tb, rec)
        self.lines += 1

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


class Run:
    """One training run in its work directory: built objects in (the method with its model), one loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        work: Path,
        method: Method,
        *,
        quiet: bool = False,
        lead: bool = True,
        resume: Path | None = None,
        on_validation=None,
    ):
        import torch

        self.cfg, self.work, self.m, self.lead = cfg, work, method, lead
        # on_validation(record) -> a reason to stop now, or None: how a sweep prunes a poor trial
        self.on_validation = on_validation
        self.params = [p for p in method.model.parameters() if p.requires_grad]
        # fused: one kernel for all parameters on a GPU (what TRL uses there); not for FSDP's sharded tensors
        fused = bool(self.params) and self.params[0].is_cuda and not cfg.fsdp
        self.opt = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None
        )
        self.total = total_steps(cfg, method.n_items)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_schedule(cfg, self.total))
        self.clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        self.resumed = resume is not None
        self.state = (
            State.from_dict(checkpoint.load(resume, method.model, self.opt, self.sched))
            if resume
            else State()
        )
        self.log = Log(work / "metrics.jsonl", cfg, lead, self.state if resume else None)
        self.quiet = quiet or not lead  # only rank 0 shows progress
        self.progress = Progress(self.total, self.quiet, start=self.state.step) if method.bar else None
        self.t0 = time.time() - self.state.elapsed

    def say(self, text: str | None) -> None:
        if text is None or self.quiet:
            return
        if self.progress is not None:
            self.progress.note(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def fit(self) -> State:
        """Train to the end (or early stop), validating and checkpointing on the way."""
        st, m, cfg = self.state, self.m, self.cfg
        has_val = m.n_val > 0
        m.begin(st, self.resumed)
        if has_val and not self.resumed:  # where we start from, so every run shows what training changed
            t = time.time()
            st.start = m.evaluate()
            st.val_s += time.time() - t
            self.log.write({"step": 0, "epoch": 0, **st.start})
            self.say(m.start_line(st.start))
            if self.progress is not None:
                self.progress.t0 = time.time()  # the ETA counts training steps only
        m.model.train()
        every = cfg.eval_every_steps
        try:
            for epoch in range(st.epoch, cfg.epochs + 1):
                # step_in_epoch > 0: a checkpoint from inside this epoch, whose end (validation, checkpoint)
                # is still to do, even when its last step was the run's last (a kill between that checkpoint
                # and the validation)
                if (st.stopped or st.step >= self.total) and st.step_in_epoch == 0:
                    break
                st.epoch = epoch
                for k, items in enumerate(m.plan(epoch)):
                    if st.stopped or st.step >= self.total:
                        break
                    if k < st.step_in_epoch:
                        continue  # done before the checkpoint we resumed from
                    self.step(items, k)
                    if has_val and every and st.step % every == 0:
                        self.validate()
                    if cfg.save_every and st.step % cfg.save_every == 0:
                        self.save()
                if has_val and not (every and st.step % every == 0):
                    self.validate()
                elif not has_val:
                    self.say(m.epoch_line(epoch, st))
                st.epoch, st.step_in_epoch = epoch + 1, 0  # the checkpoint resumes at the next epoch
                self.save()
        finally:
            if self.progress is not None:
                self.progress.close()
            self.log.close()
        st.elapsed = time.time() - self.t0
        m.end()
        return st

    def step(self, items, k: int) -> None:
        import torch

        st = self.state
        t = time.time()
        out = self.m.train_step(items, st)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        step_s = time.time() - t
        st.train_s += step_s
        st.step, st.step_in_epoch, st.last_loss = st.step + 1, k + 1, out.loss
        st.tokens += out.tokens
        st.answer_tokens += out.answer_tokens
        speed = st.tokens / max(st.train_s, 1e-9)
        self.log.write(
            {
                "step": st.step,
                "epoch": st.epoch,
                "loss": round(out.loss, 6),
                **out.record,
                "lr": self.sched.get_last_lr()[0],
                "grad_norm": round(float(dist.full(norm)), 4),
                "tokens": st.tokens,
                "tokens_per_s": round(speed, 1),
            }
        )
        if self.progress is not None:
            self.progress.update(st.step, st.epoch, self.cfg.epochs, out.loss, speed)
        else:
            self.say(self.m.step_line(out, st, self.total, speed, step_s))

    def validate(self) -> None:
        st, m = self.state, self.m
        t = time.time()
        killpoint("validation")
        rec = {"step": st.step, "epoch": st.epoch, **m.evaluate()}
        st.val_s += time.time() - t
        st.vals.append(rec)
        self.log.write(rec)
        if better(rec, st.best, *m.goal):
            st.best, st.bad = rec, 0
            save_adapter(m.model, m.tok, self.work / "best", self.cfg, write=self.lead)
            mark = " (best)"
        else:
            st.bad += 1
            mark = ""
            if self.cfg.patience and st.bad >= self.cfg.patience:
                st.stopped = True
                mark = f"; no better than step {st.best['step']} for {st.bad} validations: stopping early"
        why = self.on_validation(rec) if self.on_validation else None
        if why:
            st.stopped = True
            mark += f"; stopping: {why}"
        self.say(m.val_line(rec, st, mark))

    def save(self) -> None:
        st = self.state
        st.elapsed, st.metric_lines = time.time() - self.t0, self.log.lines
        checkpoint.save(
            self.work / "checkpoints" / f"{checkpoint.PREFIX}{st.step:07d}",
            self.m.model,
            self.opt,
            self.sched,
            asdict(st),
            write=self.lead,
        )
        if self.lead:
            checkpoint.prune(self.work / "checkpoints", self.cfg.keep_checkpoints)
        dist.barrier()

    def finish(self, out: Path, model_dir, about: dict | None = None) -> object:
        """The run's weights (the best step's when there was a validation) into the work dir, the run
        info (with `about`: what the registry keeps) beside them, and the work dir swapped into place as
        `out`. Returns the method's result."""
        st, m, cfg = self.state, self.m, self.cfg
        result = m.result(st, out)
        adapter = cfg.method in ADAPTER_METHODS
        state = dist.full_state(m.model, adapter) if dist.sharded(m.model) else None  # FSDP: all ranks gather
        if not self.lead:
            dist.barrier()  # rank 0 writes the run directory
            return result
        best = self.work / "best"
        from_best = st.best is not None and st.best["step"] != st.step
        if state is not None:
            m.model.save_pretrained(str(self.work), state_dict=state)
            if from_best:  # the run's weights are the best step's, saved beside
                for f in [*best.glob("*.safetensors"), *best.glob("*.safetensors.index.json")]:
                    shutil.copy2(f, self.work / f.name)
        else:
            if from_best:  # the run's weights are the best by validation; load them back for the final save
                load_weights(m.model, best, adapter)
            # the whole work dir is renamed into place, so no temp dir here
            m.model.save_pretrained(str(self.work))
        m.tok.save_pretrained(str(self.work))
        for name, data in getattr(m, "files", {}).items():  # the method's own (classify.py: labels.json)
            write_text(self.work / name, json.dumps(data, indent=2) + "\n")
        n = dist.world()[1]
        rundir.finish(
            self.work,
            out,
            {
                "model": cfg.model,
                "model_dir": str(model_dir),
                "method": cfg.method,
                "from_adapter": cfg.from_adapter or None,
                "adapter": "best" if st.best else "last",
                "processes": n,
                "engine": "fsdp" if state is not None else "ddp" if n > 1 else "single",
                "result": asdict(result),
                **(about or {}),
            },
        )
        dist.barrier()
        return result


def load_weights(model, folder: Path, adapter: bool) -> None:
    """Weights saved by save_adapter back into the model: an adapter's, or a full/freeze selection's."""
    from safetensors.torch import load_file

    if adapter:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    else:
        for f in sorted(folder.glob("*.safetensors")):
            model.load_state_dict(load_file(str(f)), strict=False)
