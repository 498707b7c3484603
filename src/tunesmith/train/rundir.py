"""A run directory's life, the same for every method (SFT, DPO, GRPO): where it lives while it
runs, what it was made from, and how it ends.

- A run in progress lives in `.NAME.partial` beside `--out` and is swapped into place when it
  finishes (atomic.replace_dir): a kill leaves either no run or a whole one, plus the partial
  dir to `--resume` from.
- `inputs.json` records the resolved config and every data file's sha256 when the run starts.
  `--resume` refuses when the data changed (a run that silently trained on other data than it
  says is worse than no run) unless `--allow-changed-data`, which is then recorded; and when
  `config.yaml` was edited (the optimizer and scheduler state come from the checkpoint, so an
  edited `lr` would be recorded but not used: we refuse rather than do both).
- `config.yaml` and `inputs.json` are written atomically and only once: a kill during a write
  leaves the previous file, never an empty or cut one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from tunesmith.corpus.check import walk
from tunesmith.data.formats import files_of, locate_paths
from tunesmith.data.mix import Mix, is_mix, replay_path
from tunesmith.errors import UserError
from tunesmith.files.atomic import replace_dir, sweep, write_json, write_text
from tunesmith.files.faults import killpoint
from tunesmith.files.outputs import INPUTS, RUN_INFO, check_out, check_replaceable
from tunesmith.models.weightfiles import sha256_file
from tunesmith.train.config import ADAPTER_METHODS, TrainConfig, to_yaml


def partial_dir(out: Path) -> Path:
    """Where a run lives until it finishes (then it is swapped into --out); --resume finds it here."""
    return out.resolve().parent / f".{out.name}.partial"


def check_disk(out: Path, cfg: TrainConfig) -> None:
    """Refuse to start when the output's disk cannot hold even the adapter and two checkpoints."""
    free = shutil.disk_usage(out.resolve().parent).free
    need = 64 << 20 if cfg.method in ADAPTER_METHODS else 2 << 30  # rough: adapters are MBs, full models GBs
    if free < need:
        raise UserError(
            f"--out {out}: only {free >> 20} MB free on that disk; a {cfg.method} run needs about "
            f"{need >> 20} MB for its weights and checkpoints"
        )


def source_files(cfg: TrainConfig) -> list[Path]:
    """Every file whose content the run learns from: the data (a mix file and its data sets too),
    and GRPO's style spec and rubric."""
    roots: list[Path] = []
    if cfg.data and is_mix(cfg.data) and Path(cfg.data).is_file():
        roots.append(Path(cfg.data))
        for d in Mix.load(cfg.data).datasets:
            roots += [p for p in locate_paths(d["path"], None) if p is not None]
        if cfg.val:
            roots.append(Path(cfg.val))
    elif cfg.data:
        roots += [p for p in locate_paths(cfg.data, cfg.val) if p is not None]
    files: list[Path] = []
    for r in roots:
        files += [r] if is_mix(r) else files_of(r)
    if cfg.replay:
        with contextlib.suppress(UserError):
            files.append(replay_path(cfg.replay))
    files += [Path(p) for p in (cfg.style, cfg.rubric) if p and Path(p).is_file()]
    for folder in (cfg.documents, cfg.general):  # links are not followed there, so not hashed here either
        if folder and Path(folder).is_dir():
            files += [p for _, p, _ in walk(Path(folder)) if p is not None]
        elif folder:
            files.append(Path(folder))
    # a pipe is refused when the data is read, not hashed here
    return [f for f in dict.fromkeys(files) if f.is_file()]


def fingerprint(cfg: TrainConfig) -> list[dict]:
    roles = data_roles(cfg)
    return [
        {"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f), "role": roles.get(f, "train")}
        for f in source_files(cfg)
    ]


def data_roles(cfg: TrainConfig) -> dict[Path, str]:
    """What each source file is to the run, where it is not training data: val, mix, style, rubric."""
    roles: dict[Path, str] = {}
    val = Path(cfg.val) if cfg.val else None
    if cfg.data and not is_mix(cfg.data):
        with contextlib.suppress(UserError):
            val = locate_paths(cfg.data, cfg.val)[1]
    if val is not None:
        for f in [val] if not val.is_dir() else files_of(val):
            roles[f] = "val"
    if cfg.data and is_mix(cfg.data):
        roles[Path(cfg.data)] = "mix"
    for name in ("style", "rubric"):
        if getattr(cfg, name):
            roles[Path(getattr(cfg, name))] = name
    if cfg.replay:
        with contextlib.suppress(UserError):
            roles[replay_path(cfg.replay)] = "replay"
    for name in ("documents", "general"):
        folder = getattr(cfg, name)
        if folder and Path(folder).is_dir():
            roles.update({p: name for _, p, _ in walk(Path(folder)) if p is not None})
        elif folder:
            roles[Path(folder)] = name
    return roles


def run_inputs(cfg: TrainConfig, config_file: str | None = None) -> dict[str, object]:
    """The flags that name something the run reads: --out may not be, hold, or lie inside any of them."""
    return {
        "--data": [cfg.data, *source_files(cfg)],
        "--val": cfg.val,
        "--model": cfg.model,
        "--from-adapter": cfg.from_adapter,
        "--replay": cfg.replay,
        "--documents": cfg.documents,
        "--general": cfg.general,
        "--style": cfg.style,
        "--rubric": cfg.rubric,
        "--config": config_file,
    }


def begin(
    cfg: TrainConfig, *, overwrite: bool, resume: bool, config_file: str | None = None, lead: bool = True
) -> tuple[Path, Path]:
    """Check --out (a new run) or the partial dir (--resume); returns (out, work). Only the `lead`
    process clears leftovers (another machine's live process would look dead from here)."""
    out = Path(cfg.out)
    work = partial_dir(out)
    if resume:
        if lead:
            sweep(work)
            sweep(work / "checkpoints")
        return out, work
    check_out(out, "run", overwrite=overwrite, inputs=run_inputs(cfg, config_file), clean=lead)
    if work.exists():
        raise UserError(
            f"--out {out}: an unfinished run is in {work}; continue it with `tunesmith train --resume {out}` "
            "or delete that folder"
        )
    return out, work


def record(work: Path, cfg: TrainConfig, data: list[dict], run_id: str) -> None:
    """A new run's config.yaml and inputs.json, each written atomically, once."""
    work.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(cfg.__dict__))
    write_json(
        work / INPUTS,
        {"run_id": run_id, "started": time.time(), "config": config, "data": data, "resumes": []},
    )
    killpoint("config.write")
    write_text(work / "config.yaml", to_yaml(cfg))


def saved_config(run: str) -> Path:
    """--resume RUN: the config to continue with, checked against what the run started with."""
    import yaml

    work = partial_dir(Path(run))
    saved = work / "config.yaml"
    if not work.is_dir() or not (saved.is_file() or (work / INPUTS).is_file()):
        why = (
            "that run already finished"
            if (Path(run) / RUN_INFO).is_file()
            else f"no unfinished run at {work}"
        )
        raise UserError(f"--resume {run}: {why}")
    started = _inputs(work).get("config")
    try:
        now = yaml.safe_load(saved.read_text()) if saved.is_file() else None
    except (OSError, yaml.YAMLError):
        now = None
    if started is None:  # a run from before inputs.json: its config.yaml is all there is
        if not isinstance(now, dict):
            raise UserError(
                f"{saved}: unreadable, and the run has no {INPUTS} to restore it from; start the run again"
            )
        return saved
    if not isinstance(now, dict) or not now:
        write_text(saved, to_yaml(TrainConfig(**started)))
        print(f"{saved}: was damaged; restored from {INPUTS}", file=sys.stderr)
        return saved
    changed = [k for k in sorted(set(started) | set(now)) if started.get(k) != now.get(k)]
    if changed:
        what = ", ".join(f"{k} {started.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise UserError(
            f"{saved}: edited since the run started ({what}); a resumed run continues with the settings it "
            "started with (its optimizer and schedule are in the checkpoint): undo the edit, or start a new "
            "run"
        )
    return saved


def check_data(
    work: Path, cfg: TrainConfig, ckpt: Path, allow_changed: bool, write: bool = True
) -> list[dict]:
    """--resume: the data must be what the run started on; returns the current fingerprint."""
    rec = _inputs(work)
    now = fingerprint(cfg)
    if "data" not in rec:
        print(f"{work}: this run predates data checksums; its data cannot be checked", file=sys.stderr)
        return now
    # the last data the run went on with
    accepted = rec["resumes"][-1]["data"] if rec.get("resumes") else rec["data"]
    before = {d["path"]: d["sha256"] for d in accepted}
    after = {d["path"]: d["sha256"] for d in now}
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    if not changed:
        return now
    what = ", ".join(
        f"{p} ({'added' if p not in before else 'removed' if p not in after else 'changed'})" for p in changed
    )
    if not allow_changed:
        raise UserError(
            f"--resume {cfg.out}: the data changed since the run started: {what}; restore it, or pass "
            "--allow-changed-data to continue on the new data (recorded in the run)"
        )
    if not write:
        return now
    print(f"continuing on changed data: {what} (recorded in {INPUTS})", file=sys.stderr)
    rec.setdefault("resumes", []).append(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "checkpoint": ckpt.name,
            "changed_data": changed,
            "data": now,
        }
    )
    write_json(work / INPUTS, rec)
    return now


def finish(work: Path, out: Path, info: dict) -> None:
    """Write the run's info file and swap the finished run into --out; nothing of ours is left behind."""
    sweep(work)
    sweep(work / "checkpoints")
    rec = _inputs(work)
    write_json(work / RUN_INFO, {**info, "data": rec.get("data"), "resumes": rec.get("resumes", [])})
    killpoint("finish.before_swap")
    check_replaceable(out, "run", keep=work)
    replace_dir(work, out)


def run_id_of(work: Path) -> str | None:
    """The id a run got when it started (kept across resumes); None for a new run."""
    rid = _inputs(work).get("run_id")
    return rid if isinstance(rid, str) and rid else None


def started_at(work: Path) -> float | None:
    t = _inputs(work).get("started")
    return float(t) if isinstance(t, (int, float)) else None


def _inputs(work: Path) -> dict:
    try:
        rec = json.loads((work / INPUTS).read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}
