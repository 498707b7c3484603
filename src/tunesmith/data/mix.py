"""Multi-task mixes: a YAML file naming several data sets, each with a task label and a weight.
`train --data mix.yaml` trains on their train splits, task-labelled and re-sampled by weight;
`data prepare mix.yaml` splits them together. Kept apart from prepare.py because training reads
mixes too, and needs none of the cleaning and splitting. Also replay (`train --replay`): the earlier
training data drawn back in beside new corrections, so a few of them adjust a version instead of
rewriting it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import Example, load_examples, locate_paths, messages_digest
from tunesmith.errors import UserError
from tunesmith.models.chat import last_assistant


@dataclass
class Mix:
    """A multi-task mix file: several data sets, each with a task label and a weight."""

    datasets: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> Mix:
        import yaml

        p = Path(path)
        try:
            spec = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"{path}: cannot read mix file ({e})") from None
        if not isinstance(spec, dict) or set(spec) != {"datasets"} or not isinstance(spec["datasets"], list):
            raise UserError(f"{path}: a mix file holds one key, datasets: a list of {{path, task, weight}}")
        out = []
        for i, d in enumerate(spec["datasets"]):
            if not isinstance(d, dict) or "path" not in d or set(d) - {"path", "task", "weight"}:
                raise UserError(f"{path}: datasets[{i}]: expected keys path (required), task, weight")
            if not isinstance(d["path"], str) or not d["path"].strip():
                raise UserError(
                    f"{path}: datasets[{i}].path: expected a file or folder name, got {d['path']!r}"
                )
            w = d.get("weight", 1.0)
            if not isinstance(w, (int, float)) or w <= 0:
                raise UserError(f"{path}: datasets[{i}].weight: expected a positive number, got {w!r}")
            src = Path(d["path"])
            out.append(
                {
                    "path": str(src if src.is_absolute() else p.parent / src),
                    "task": str(d.get("task") or src.stem),
                    "weight": float(w),
                }
            )
        if not out:
            raise UserError(f"{path}: datasets is empty")
        return cls(out)


def is_mix(path: str | Path) -> bool:
    return Path(path).suffix in (".yaml", ".yml")


def apply_weights(examples: list[Example], weights: dict[str, float], seed: int) -> list[Example]:
    """Up/down-sample training examples per task: weight 2 repeats each twice, 0.5 keeps half."""
    rng = random.Random(seed)
    out = []
    for ex in examples:
        w = weights.get(ex.meta.get("task"), 1.0)
        copies = int(w) + (1 if rng.random() < w - int(w) else 0)
        out += [ex] * copies
    rng.shuffle(out)
    return out


def load_training_mix(path: str | Path, seed: int) -> tuple[list[Example], list[Example]]:
    """`train --data mix.yaml`: each data set's train (and val) split, task-labelled and weighted."""
    mix = Mix.load(path)
    train, val = [], []
    for d in mix.datasets:
        tr, va = locate_paths(d["path"], None)
        for ex in load_examples(tr, f"{path}: {d['path']}"):
            ex.meta["task"] = d["task"]
            train.append(ex)
        if va:
            for ex in load_examples(va, f"{path}: {d['path']}"):
                ex.meta["task"] = d["task"]
                val.append(ex)
    return apply_weights(train, {d["task"]: d["weight"] for d in mix.datasets}, seed), val


def replay_path(path: str | Path) -> Path:
    """The training split of --replay: a prepared folder's train file, or the file itself."""
    return locate_paths(path, None)[0]


def with_replay(new: list[Example], path: str | Path, ratio: float, seed: int) -> tuple[list[Example], int]:
    """`train --replay DATA`: the new examples and round(ratio * len(new)) earlier ones drawn (seeded) from
    DATA's training split, shuffled together. An earlier example with the prompt of a new one is never
    drawn: a correction replaces the answer it corrects. Returns (examples, how many were replayed)."""
    asked = {messages_digest(e.messages[: last_assistant(e.messages)]) for e in new}
    pool = [e for e in load_examples(replay_path(path), "--replay")
            if messages_digest(e.messages[: last_assistant(e.messages)]) not in asked]  # fmt: skip
    rng = random.Random(seed)
    drawn = rng.sample(pool, min(len(pool), round(ratio * len(new))))
    out = new + drawn
    rng.shuffle(out)
    return out, len(drawn)
