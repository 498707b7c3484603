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
from tunesmith.models.heads import load_classifier, read_labels
from tunesmith.models.loading import base_model_of

BATCH = 16


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


def load_run(run: str, trust_remote_code: bool = False):
    """The model of a --task run with its trained head, and its label space."""
    space = read_labels(run)
    n = 1 if space["task"] == "regress" else len(space["classes"])
    if (Path(run) / "adapter_config.json").is_file():
        from peft import PeftModel

        model, tok, _ = load_classifier(
            base_model_of(run, None), n, space["task"], trust_remote_code=trust_remote_code
        )
        model = PeftModel.from_pretrained(model, run)
    else:  # --method full: the run is the whole model
        model, tok, _ = load_classifier(run, n, space["task"], trust_remote_code=trust_remote_code)
    model.eval()
    return model, tok, space


def answer(space: dict, logits: list[float]) -> dict:
    """One input's prediction from its outputs."""
    if space["task"] == "regress":
        return {"value": round(logits[0] * space["std"] + space["mean"], 6)}
    names = space["classes"]
    if space["task"] == "multilabel":
        probs = {c: 1 / (1 + math.exp(-x)) for c, x in zip(names, logits)}
        return {
            "labels": [c for c in names if probs[c] > 0.5],
            "probabilities": {c: round(v, 4) for c, v in probs.items()},
        }
    top = max(logits)
    exp = [math.exp(x - top) for x in logits]
    probs = {c: e / sum(exp) for c, e in zip(names, exp)}
    return {"label": max(probs, key=probs.get), "probabilities": {c: round(v, 4) for c, v in probs.items()}}


def predict(model, tok, space: dict, texts: list[str], max_length: int = 1024) -> list[dict]:
    import torch

    dev = next(model.parameters()).device
    out: list[dict | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.no_grad():
        for s in range(0, len(order), BATCH):
            part = order[s : s + BATCH]
            enc = tok(
                [texts[i] for i in part],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(
                input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev)
            ).logits
            for i, row in zip(part, logits.float().cpu().tolist()):
                out[i] = answer(space, row)
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
