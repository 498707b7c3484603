"""`tunesmith predict --adapter RUN FILE`: a run trained with `--task` labels texts or scores them.
One JSON line per input: the class with every class's probability (softmax), the classes whose
probability passes 0.5 with each one's (multilabel: one sigmoid per class), or the value (scaled back
to the target's units). An input's own label, when it has one, comes back as `gold` beside it.

Inputs are any file `data check` reads with a `text` (labelled or not: a `{"text": ...}` line is
enough here), or plain text, one per line; `--text-field` names another column."""

from __future__ import annotations

import math
from pathlib import Path

from tunesmith.data.formats import read_records
from tunesmith.data.labels import label_shape, read_label
from tunesmith.data.records import ReadOptions
from tunesmith.errors import UserError
from tunesmith.models.heads import answer, load_run, predict

__all__ = ["answer", "load_run", "predict"]  # the CLI reads them from here


def read_texts(path: str, text_field: str = "text") -> list[tuple[str, str, object]]:
    """(where, text, gold label or None) per input."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    if p.suffix in (".txt", ".md"):
        lines = [
            (f"{path}:{n}", t, None) for n, t in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        ]
        out = [x for x in lines if x[1].strip()]
    else:
        out = []
        for line, obj in read_records(p, ReadOptions()):
            where = f"{path}:{line}"
            if (
                not isinstance(obj, dict)
                or not isinstance(obj.get(text_field), str)
                or not obj[text_field].strip()
            ):
                raise UserError(f"{where}: {text_field}: expected the text to label (a non-empty string)")
            shape = label_shape({**obj, "text": obj[text_field]})
            gold = read_label(obj, shape)[0] if shape else None
            out.append((where, obj[text_field], gold))
    if not out:
        raise UserError(f"{path}: no texts in it")
    return out


def agreement(space: dict, rows: list[dict]) -> str:
    """Against the inputs' own labels, where they have them: accuracy, exact-set accuracy, or RMSE."""
    gold = [r for r in rows if "gold" in r]
    if not gold:
        return ""
    if space["task"] == "regress":
        rmse = math.sqrt(sum((r["value"] - r["gold"]) ** 2 for r in gold) / len(gold))
        return f"RMSE {rmse:.4g} against the {len(gold)} given targets"
    key = "label" if space["task"] == "classify" else "labels"
    same = sum((r[key] == r["gold"]) if key == "label" else set(r[key]) == set(r["gold"]) for r in gold)
    return f"{100 * same / len(gold):.1f} % agree with the {len(gold)} given labels"
