"""Two evals of runs trained with --task on one test set, example by example: what `--gate`, `runs
compare` and `curve` need of them, as `eval.run.compare` gives it for text.

A label eval keeps each test example's text, its gold label and the tuned prediction (eval/labels.py),
so two of them pair by position once the texts and golds agree. The classes are read by name, not by
output index: two runs trained on different data may order (or hold) different classes, and an index
would then compare one run's "billing" with the other's "bug".
"""

from __future__ import annotations

from tunesmith.errors import UserError
from tunesmith.scoring.labelled import HIGHER, paired

GATED = {"classify": ("accuracy", "macro_f1"), "multilabel": ("micro_f1", "macro_f1"), "regress": ("rmse",)}
LOWER = {
    "rmse",
    "mae",
    "mse",
    "squared_error",
}  # the label measures where lower is better (HIGHER has the rest)


def is_label_result(r: dict) -> bool:
    return r.get("task") in GATED


def why_not_paired(a: dict, b: dict) -> str | None:
    """Why two label evals are not on the same test set (the texts and labels in order), or None."""
    if a.get("task") != b.get("task"):
        return f"a {a.get('task')} eval here, a {b.get('task')} eval there"
    ea, eb = a.get("examples") or [], b.get("examples") or []
    if len(ea) != len(eb):
        return f"{len(ea)} examples here, {len(eb)} there"
    for i, (x, y) in enumerate(zip(ea, eb), 1):
        if (x.get("text"), x.get("gold")) != (y.get("text"), y.get("gold")):
            return f"example {i} differs ({x.get('where')} vs {y.get('where')})"
    return None


def _predicted(task: str, e: dict):
    return e.get("value") if task == "regress" else e.get("label" if task == "classify" else "labels")


def compare_labels(a: dict, b: dict) -> dict | None:
    """a's tuned predictions minus b's on every measure of the task (paired bootstrap), or None when the
    two evals are not on the same examples."""
    if why_not_paired(a, b) is not None or not a.get("examples"):
        return None
    task = a["task"]
    ea, eb = a["examples"], b["examples"]
    gold = [e["gold"] for e in ea]
    pa, pb = [_predicted(task, e) for e in ea], [_predicted(task, e) for e in eb]
    if task == "regress":
        return paired(task, gold, pa, pb)
    seen = set()
    for row in gold + pa + pb:
        seen |= {row} if task == "classify" else set(row)
    names = sorted(seen)
    if task == "classify":
        return paired(task, [names.index(x) for x in gold], [names.index(x) for x in pa],
                      [names.index(x) for x in pb], len(names))  # fmt: skip
    rows = [[[int(c in set(r)) for c in names] for r in part] for part in (gold, pa, pb)]
    return paired(task, *rows, len(names))


PER_EXAMPLE = {"classify": ("accuracy",), "multilabel": ("exact_match",), "regress": ("mae", "squared_error")}


def per_example(results: dict, metric: str) -> list[float]:
    """One number per test example whose mean is the measure (`curve` draws it with its interval): 100 for a
    right class or set and 0 for a wrong one, or the absolute or squared error of a value."""
    task = results["task"]
    if metric not in PER_EXAMPLE[task]:
        raise UserError(f"--metric {metric}: a --task {task} curve draws {' or '.join(PER_EXAMPLE[task])}")
    out = []
    for e in results["examples"]:
        got = _predicted(task, e)
        if task == "regress":
            out.append(abs(got - e["gold"]) ** (2 if metric == "squared_error" else 1))
        else:
            same = got == e["gold"] if task == "classify" else set(got) == set(e["gold"])
            out.append(100.0 * same)
    return out


def worse(metric: str, change: float) -> bool:
    """Whether a change of this metric is for the worse (lower is better for the errors)."""
    return change > 0 if metric in LOWER else change < 0


__all__ = ["GATED", "HIGHER", "compare_labels", "is_label_result", "why_not_paired", "worse"]
