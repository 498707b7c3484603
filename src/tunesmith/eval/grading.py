"""`eval --grader FILE`: the hosted graders (scoring/hosted.py) applied to one system's answers, as
metric rows `grader:NAME` (the grade, 0-1) and `grader:NAME:pass` (pass rate, with a pass_threshold).
A grader's `item` is the test row: its fields, and `reference` when it has no field of that name."""

from __future__ import annotations

from tunesmith.eval.rows import GRADER
from tunesmith.scoring.templates import item_of, sample_of


def asks_model(g) -> bool:
    return g.kind in ("score_model", "label_model") or any(asks_model(p) for p in g.parts.values())


def grade_hosted(graders, outputs, examples, refs) -> tuple[dict[str, list[float]], list[str]]:
    """Each hosted grader's value per answer (grader:NAME) and, with a pass_threshold, whether it
    passed (grader:NAME:pass, 100 or 0); and a note per grader that graded some answers 0 because it
    could not grade them."""
    samples = [sample_of(o.text, "stop" if o.stopped else "length") for o in outputs]
    items = [item_of(ex, r) for ex, r in zip(examples, refs)]
    wheres = [f"{ex.path}:{ex.line}" for ex in examples]
    out, notes = {}, []
    for g in graders:
        g.invalid = 0
        vals = g.score(samples, items, wheres)
        out[f"{GRADER}{g.name}"] = [round(v, 4) for v in vals]
        if g.pass_threshold is not None:
            out[f"{GRADER}{g.name}:pass"] = [100.0 if v >= g.pass_threshold else 0.0 for v in vals]
        if g.invalid:
            notes.append(f"grader {g.name}: {g.invalid} of {len(vals)} answers graded 0 because it could not "
                         "grade them (an error in its code, or a judge reply with no grade)")  # fmt: skip
    return out, notes
