"""`eval --grader FILE`: the hosted graders (scoring/hosted.py) applied to one system's answers, as
metric rows `grader:NAME` (the grade, 0-1) and `grader:NAME:pass` (pass rate, with a pass_threshold).
A grader's `item` is the test row: its fields, and `reference` when it has no field of that name. An
exported eval's data file ({"item": ...} rows) is asked through its run's input_messages template."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.data.records import Example
from tunesmith.errors import UserError
from tunesmith.eval.rows import GRADER
from tunesmith.scoring.templates import item_of, render, sample_of


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


def item_examples(path: str, template: list[dict], notes: list[str]) -> list[Example]:
    """The rows of an exported eval's data file, {"item": {...}} per line, each asked as the eval run's
    input_messages template says (`{{ item.* }}` filled in): prompt-only examples the graders score."""
    if template[-1]["role"] != "user":
        raise UserError(
            "the eval's input_messages template ends with an assistant turn; it must end with the user's"
        )
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f'--data {path}: no such file (an exported eval\'s items, one {{"item": ...}} per line)'
        )
    out, samples = [], 0
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"{where}: invalid JSON ({e})") from None
            item = row.get("item") if isinstance(row, dict) else None
            if not isinstance(item, dict):
                raise UserError(
                    f'{where}: item: expected an object (an exported eval\'s row is {{"item": {{...}}}})'
                )
            samples += "sample" in row
            root = {"item": item, "sample": {}}
            msgs = [{"role": m["role"], "content": render(m["content"], root, where)} for m in template]
            if not msgs[-1]["content"].strip():
                raise UserError(f"{where}: the template's user turn is empty for this item")
            out.append(Example(msgs, str(p), n, dict(item)))
    if not out:
        raise UserError(f"--data {path}: no items in it")
    if samples:
        notes.append(
            f"{path}: 'sample' in {samples} rows (answers made elsewhere) is not read: this model answers"
        )
    return out
