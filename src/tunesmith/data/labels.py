"""Labels and scores: examples that are a text and a class (`{"text", "label"}`), several classes
(`{"text", "labels": [...]}`) or a number (`{"text", "target": 3.5}`), for `train --task classify |
multilabel | regress`. Read from JSONL, JSON, CSV or Parquet like every other shape; a CSV cell of
`labels` holds a JSON list, and a `target` cell the number's text.

An example keeps its text as a single user turn (what prompting baselines and the chat template read)
and its label in `Example.label`: a string, a list of strings, or a float.

`data check` on such data also reports (LabelReport): the class distribution; classes with fewer
than RARE examples; labels that differ only by case or spaces ("Positive " and "positive"), which
are almost always one class written two ways; classes that only an evaluation file has (a model
cannot learn them); and for a target its range and the values far outside the rest (beyond 3
interquartile ranges of the quartiles, the rule of the answer-length check).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import replace

from tunesmith.errors import UserError

LABEL_SHAPES = {"label": "label", "labels": "labels", "target": "target"}  # shape -> the field it needs
RARE = 5  # a class with fewer training examples than this is hard to learn and to measure

Problem = tuple[str, str, str]


def label_shape(obj: dict) -> str | None:
    if "text" not in obj:
        return None
    return next((s for s, f in LABEL_SHAPES.items() if f in obj), None)


def read_label(obj: dict, shape: str) -> tuple[str | list[str] | float | None, list[Problem]]:
    """The label of a record of `shape`, checked; (None, problems) when it is not usable."""
    key = LABEL_SHAPES[shape]
    v = obj.get(key)
    if shape == "label":
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)  # a numeric class id (1, 2, 3) is a class name
        if not isinstance(v, str) or not v.strip():
            return None, [("error", key, "expected a class name (a non-empty string)")]
        return v, []
    if shape == "labels":
        if isinstance(v, str):  # a CSV cell
            try:
                v = json.loads(v) if v.strip().startswith("[") else v
            except ValueError:
                return None, [
                    ("error", key, 'expected a list of class names, e.g. ["slow service", "cold food"]')
                ]
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            return None, [
                ("error", key, 'expected a list of class names, e.g. ["slow service", "cold food"]')
            ]
        if len(set(v)) != len(v):
            return None, [("error", key, "names a class twice")]
        return list(v), []
    if isinstance(v, str):  # a CSV cell
        try:
            v = float(v.strip())
        except ValueError:
            return None, [("error", key, f"{v!r} is not a number")]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None, [("error", key, f"{v!r} is not a finite number")]
    return float(v), []


def label_json(label) -> dict:
    if isinstance(label, list):
        return {"labels": label}
    if isinstance(label, float):
        return {"target": label}
    return {"label": label}


def class_names(label) -> list[str]:
    """The classes a label names: its one class, its list, or none for a number."""
    return [] if isinstance(label, float) else label if isinstance(label, list) else [label]


def known_labels(examples: list, classes: list[str], other: str = "") -> list:
    """Examples checked against a run's classes: a class the training never showed is an error naming
    its file, line and the known classes, or, with `--other NAME` (one of the known classes), read as
    NAME, so a team that trains with a catch-all class can score a test set with new labels in it. The
    examples given are not changed; mapped ones are copies."""
    known = set(classes)
    if other and other not in known:
        raise UserError(f"--other {other!r}: not among the training classes ({_shown(classes)})")
    out = []
    for e in examples:
        new = [c for c in class_names(e.label) if c not in known]
        if new and not other:
            raise UserError(
                f"{e.path}:{e.line}: label {new[0]!r} was never seen in training (the classes are "
                f"{_shown(classes)}); --other CLASS reads such labels as one of them"
            )
        if new:
            mapped = (
                other if isinstance(e.label, str) else sorted({other if c in new else c for c in e.label})
            )
            e = replace(e, label=mapped)
        out.append(e)
    return out


def _shown(classes: list[str]) -> str:
    return ", ".join(repr(n) for n in classes[:20]) + (" ..." if len(classes) > 20 else "")


def task_of(label) -> str:
    return "multilabel" if isinstance(label, list) else "regress" if isinstance(label, float) else "classify"


def _norm(name: str) -> str:
    return " ".join(name.split()).lower()


class LabelReport:
    """What `data check` adds for labelled data; bounded by the number of classes, not of examples
    (a regression target keeps one float per example: 8 bytes)."""

    def __init__(self):
        self.counts: dict[str, Counter] = defaultdict(Counter)  # role (train/eval/other) -> class -> count
        self.first: dict[str, str] = {}  # class -> where it is first seen
        self.targets: list[tuple[float, str]] = []
        self.tasks: Counter = Counter()

    def add(self, label, where: str, role: str | None) -> None:
        self.tasks[task_of(label)] += 1
        if isinstance(label, float):
            self.targets.append((label, where))
            return
        for name in class_names(label):
            self.counts[role or "train"][name] += 1
            self.first.setdefault(name, where)

    def findings(self) -> tuple[list[tuple[str, str, str]], list[str]]:
        """([(where, message, level)], summary lines)."""
        out: list[tuple[str, str, str]] = []
        lines: list[str] = []
        if len(self.tasks) > 1:
            kinds = ", ".join(f"{n} {t}" for t, n in self.tasks.most_common())
            out.append(("", f"mixed label kinds ({kinds}): one file is one task", "error"))
        if self.counts:
            out += self._classes(lines)
        if self.targets:
            out += self._targets(lines)
        return out, lines

    def _classes(self, lines: list[str]) -> list[tuple[str, str, str]]:
        out = []
        train = self.counts.get("train", Counter())
        total: Counter = sum(self.counts.values(), Counter())
        lines.append(
            f"{len(total)} classes: "
            + ", ".join(f"{c} {n}" for c, n in total.most_common(20))
            + (f", ... ({len(total) - 20} more)" if len(total) > 20 else "")
        )
        if len(total) == 1:
            out.append(("", f"one class only ({next(iter(total))}): nothing to tell apart", "warning"))
        groups = defaultdict(list)
        for c in total:
            groups[_norm(c)].append(c)
        for same in groups.values():
            if len(same) > 1:
                named = " and ".join(repr(c) for c in sorted(same))
                minor = min(same, key=lambda c: (total[c], c))  # where the rarer spelling first appears
                out.append((self.first[minor], f"labels {named} differ only by case or spaces", "warning"))
        for c, n in sorted(train.items()):
            if n < RARE:
                out.append(
                    (
                        self.first[c],
                        f"class {c!r} has {n} training example{'s' if n > 1 else ''} "
                        f"(fewer than {RARE}: hard to learn and to measure)",
                        "warning",
                    )
                )
        for c in sorted(self.counts.get("eval", Counter())):
            if c not in train and "train" in self.counts:
                out.append(
                    (
                        self.first[c],
                        f"class {c!r} is only in an evaluation file: no model can learn it",
                        "warning",
                    )
                )
        return out

    def _targets(self, lines: list[str]) -> list[tuple[str, str, str]]:
        values = [v for v, _ in self.targets]
        lo, hi = min(values), max(values)
        sd = statistics.pstdev(values) if len(values) > 1 else 0.0
        lines.append(
            f"target: {len(values)} values from {lo:g} to {hi:g}, mean {statistics.fmean(values):g}, "
            f"standard deviation {sd:g}"
        )
        if sd == 0:
            return [("", f"every target is {lo:g}: nothing to learn", "warning")]
        out = []
        if len(values) >= 20:
            q = statistics.quantiles(values, n=4)
            iqr = q[2] - q[0]
            for v, where in self.targets:
                if iqr > 0 and (v > q[2] + 3 * iqr or v < q[0] - 3 * iqr):
                    out.append(
                        (where, f"target {v:g} is an outlier (middle half: {q[0]:g} to {q[2]:g})", "warning")
                    )
        return out


def stratified_order(labels: list[str], seed: int) -> list[int]:
    """Indices in an order where every stretch holds the classes in their overall proportions: each
    class shuffled, its members spread evenly over [0, 1) from a random offset, then all merged. Taking
    the first k for a test split then gives each class its share (to within one example)."""
    rng = random.Random(seed)
    members: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        members[label].append(i)
    keyed = []
    for name in sorted(members):
        idx = members[name]
        rng.shuffle(idx)
        offset = rng.random()
        keyed += [((k + offset) / len(idx), i) for k, i in enumerate(idx)]
    return [i for _, i in sorted(keyed)]
