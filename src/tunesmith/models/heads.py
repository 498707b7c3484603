"""A model with a head for labels and scores: transformers' *ForSequenceClassification (llama, qwen2/3,
gemma3, phi3 and the BERT family have one). `train --task classify | multilabel | regress` trains it,
`tunesmith predict` answers with it. A decoder's head reads the state of the last token that is not
padding, which transformers finds by the pad id in the model's config: it is set from the tokenizer
here, or every sequence would be read at its end, padding included.

What the outputs mean goes with the run in `labels.json`: the task, the class names in output order,
or the target's scaling (regression trains on (y - mean) / std, so one learning rate suits targets of
any size, and predictions are scaled back).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.models.loading import (
    LABELS_FILE,
    LOAD_ERRORS,
    _why,
    base_model_of,
    default_dtype,
    device,
    load_tokenizer,
)
from tunesmith.models.resolve import resolve

__all__ = ["LABELS_FILE", "load_classifier", "read_labels"]
BATCH = 16  # texts per forward pass when predicting
TASKS = ("classify", "multilabel", "regress")
MEASURE = {
    "classify": "accuracy",
    "multilabel": "micro_f1",
    "regress": "rmse",
}  # a task's headline, best-step pick
PROBLEM = {"classify": "single_label_classification", "multilabel": "multi_label_classification",
           "regress": "regression"}  # fmt: skip


def load_classifier(
    model_spec: str, n_outputs: int, task: str, *, trust_remote_code: bool = False, dtype=None
):
    """-> (model, tokenizer, model_dir): the base model with a new head of `n_outputs`, on the device."""
    model_dir = resolve(model_spec, trust_remote_code=trust_remote_code)
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # "some weights were newly initialized": the head, as meant
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir),
            num_labels=n_outputs,
            problem_type=PROBLEM[task],
            dtype=dtype or default_dtype(),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except LOAD_ERRORS as e:
        if "Unrecognized configuration class" in str(e):
            raise UserError(
                f"{model_dir}: transformers has no sequence-classification head for this architecture"
            ) from None
        raise UserError(f"{model_dir}: cannot load this model with a head ({_why(e)})") from None
    tok = load_tokenizer(model_dir, trust_remote_code)
    model.config.pad_token_id = tok.pad_token_id
    return model.to(device()), tok, model_dir


def read_labels(run: str | Path) -> dict:
    """The label space of a run trained with --task; a one-line error for any other folder."""
    p = Path(run) / LABELS_FILE
    if not p.is_file():
        raise UserError(
            f"{run}: not a run trained with --task classify, multilabel or regress (no {LABELS_FILE})"
        )
    try:
        space = json.loads(p.read_text())
        assert space["task"] in TASKS
    except (OSError, ValueError, KeyError, AssertionError, TypeError):
        raise UserError(f"{p}: not a label space written by `tunesmith train --task`") from None
    return space


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
