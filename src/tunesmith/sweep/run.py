"""A sweep: Optuna's TPE sampler proposes settings, each trial is an ordinary `tunesmith train` run (its
own folder under the sweep's, entered in the run registry), and a pruner stops a poor trial early from
its validation curve. We write no search of our own: Optuna is the field's maintained library for it.

The study lives in Optuna's storage: by default a journal file in the sweep's folder (Optuna's
JournalFileBackend, made for several processes on one machine: appends under a file lock, where
SQLite's single writer would make workers wait on each other), or any RDB URL (`--storage
postgresql://...`) that several machines share. So `--resume` continues a killed sweep without
repeating a finished trial (the trial that was running when it died is marked failed and its slot
run again), and `--workers N` processes take trials from one study.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.sweep.space import Param
from tunesmith.train.config import TrainConfig
from tunesmith.train.trainer import train

PRUNERS = ("median", "halving", "none")


@dataclass
class SweepSpec:
    base: TrainConfig
    space: list[Param]
    out: Path
    trials: int = 20
    time_s: float | None = None  # stop starting trials after this long
    metric: str = "val_loss"  # or a generation metric on the validation set (rougeL, ...)
    direction: str = ""  # minimize / maximize; "" = minimize a loss, maximize anything else
    pruner: str = "median"
    storage: str | None = None  # an Optuna storage URL; default: sqlite in the sweep's folder
    study: str | None = None
    resume: bool = False
    registry: str | None = None
    seed: int = 0
    workers: int = 1

    @property
    def key(self) -> str:
        """The validation record's field the sweep optimises."""
        return (
            "val_loss" if self.metric in ("val_loss", "loss") else f"val_{self.metric.removeprefix('val_')}"
        )

    @property
    def maximize(self) -> bool:
        if self.direction:
            return self.direction == "maximize"
        return not self.key.endswith("loss")


def make_pruner(name: str):
    import optuna

    if name == "median":  # stop a trial whose value is worse than the median of earlier trials at that step
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def storage_of(spec: SweepSpec):
    """--storage URL, else the journal file in the sweep's folder."""
    if spec.storage:
        return spec.storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str((spec.out / "study.journal").resolve())))


def open_study(spec: SweepSpec, joining: bool = False):
    import optuna

    if spec.pruner not in PRUNERS:
        raise UserError(f"--pruner {spec.pruner}: one of {', '.join(PRUNERS)}")
    storage = storage_of(spec)
    name = spec.study or spec.out.resolve().name
    exists = name in optuna.get_all_study_names(storage)
    if exists and not (spec.resume or joining):
        raise UserError(
            f"sweep {name}: a study of that name exists in {storage}; pass --resume to continue it "
            "(finished trials are kept), or choose another --out / --study"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="maximize" if spec.maximize else "minimize",
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        pruner=make_pruner(spec.pruner),
    )


def objective(spec: SweepSpec, trial) -> float:
    """One trial: the base config with the trial's settings, trained into OUT/trial-NNN."""
    import optuna

    params = {p.name: p.suggest(trial) for p in spec.space}
    trial.set_user_attr("pid", os.getpid())  # which worker ran it
    out = spec.out / f"trial-{trial.number:03d}"
    extra = {"eval_metric": spec.key.removeprefix("val_")} if spec.key != "val_loss" else {}
    cfg = dataclasses.replace(spec.base, **params, **extra, out=str(out))
    pruned: list[int] = []

    def report(rec: dict) -> str | None:
        trial.report(float(rec[spec.key]), rec["step"])
        if trial.should_prune():
            pruned.append(rec["step"])
            return f"pruned by the sweep at step {rec['step']} ({spec.key} {rec[spec.key]:g})"
        return None

    result = train(cfg, quiet=True, registry_path=spec.registry, on_validation=report, overwrite=spec.resume)
    trial.set_user_attr("out", str(out))
    if pruned:
        raise optuna.TrialPruned(f"at step {pruned[0]}")
    best = result.best or {}
    if spec.key not in best:
        raise UserError(f"sweep: trial {trial.number} has no {spec.key}; the sweep needs validation data")
    return float(best[spec.key])


def work(spec: SweepSpec, say=print, joining: bool = False, start=None) -> None:
    """Take trials from the study until it has `trials` finished or pruned ones, or the time is up (one
    worker; several share the budget through the storage, each checking it after every trial)."""
    import optuna

    study = open_study(spec, joining=joining)
    if start is not None:  # the workers begin together, not the first one up with every trial
        start.wait(timeout=300)
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    t0 = time.time()
    study.optimize(
        lambda trial: objective(spec, trial),
        timeout=spec.time_s,
        callbacks=[
            optuna.study.MaxTrialsCallback(spec.trials, states=counted),
            lambda s, t: say(trial_line(t, spec, time.time() - t0)),
        ],
    )


def _worker(spec: SweepSpec, start) -> None:
    """A worker process (spawned: a fresh interpreter, no forked torch state)."""
    work(spec, say=lambda line: print(line, flush=True), joining=True, start=start)


def shared_threads(spec: SweepSpec) -> SweepSpec:
    """With several workers and no --threads, the cores shared out, so the workers' threads do not fight."""
    if spec.workers == 1 or spec.base.threads:
        return spec
    threads = max(1, (os.cpu_count() or 1) // spec.workers)
    return dataclasses.replace(spec, base=dataclasses.replace(spec.base, threads=threads))


def run_sweep(spec: SweepSpec, say=print) -> object:
    """Run the sweep to its budget (with --workers N, in N processes) and return the study."""
    import multiprocessing

    import optuna

    if not spec.base.data:
        raise UserError("sweep: --data is required")
    if spec.workers < 1:
        raise UserError("--workers must be at least 1")
    spec.out.mkdir(parents=True, exist_ok=True)
    study = open_study(spec)
    states = optuna.trial.TrialState
    for t in study.trials:
        if t.state == states.RUNNING and spec.resume:
            study.tell(t.number, state=states.FAIL)  # killed with the sweep: its slot is run again
    done = [t for t in study.trials if t.state in (states.COMPLETE, states.PRUNED)]
    left = spec.trials - len(done)
    better = "higher" if spec.maximize else "lower"
    over = "; ".join(p.describe() for p in spec.space)
    say(
        f"sweep {study.study_name}: {len(done)} trials done, {max(left, 0)} to run; "
        f"{spec.key} ({better} is better) over {over}"
    )
    if left > 0 and spec.workers == 1:
        work(spec, say, joining=True)
    elif left > 0:
        spec = shared_threads(spec)
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Barrier(spec.workers)
        procs = [ctx.Process(target=_worker, args=(spec, start)) for _ in range(spec.workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = sum(bool(p.exitcode) for p in procs)
        if failed:
            raise UserError(f"sweep: {failed} of {spec.workers} workers failed (their messages are above)")
    return optuna.load_study(study_name=study.study_name, storage=storage_of(spec))


def params_text(params: dict) -> str:
    """A trial's settings as the ranking, the report and the progress lines show them."""
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def trial_line(t, spec: SweepSpec, elapsed: float) -> str:
    params = params_text(t.params)
    if t.state.name == "PRUNED" and t.intermediate_values:
        step = max(t.intermediate_values)
        value = f"pruned at step {step} ({spec.key} {t.intermediate_values[step]:.4f})"
    else:
        value = f"{spec.key} {t.value:.4f}" if t.value is not None else t.state.name.lower()
    return f"trial {t.number}: {params} -> {value} ({elapsed:.0f}s in)"
