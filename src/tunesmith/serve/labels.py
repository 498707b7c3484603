"""`serve`'s runs trained with --task: POST /v1/classify answers with a label and every class's
probability, the labels that pass 0.5 (multilabel), or a value, as `tunesmith predict` does.

A --task run is its own model (the base with a trained head), so it is not one more adapter on the
text engine's base: each is loaded once, at start, beside it, and answers under its own lock in a
worker thread, so a long batch does not hold the event loop. A request is one forward pass over at
most MAX_INPUTS texts (api_schema), each checked against --max-prompt-tokens, so no request can queue
unbounded work; chat requests for such a name get a 400 that points here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.models.heads import load_run, predict
from tunesmith.serve.engine import APIError


@dataclass
class Classifier:
    model: object
    tokenizer: object
    space: dict
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def task(self) -> str:
        return self.space["task"]


def load_classifiers(runs: dict[str, Path], *, trust_remote_code: bool) -> dict[str, Classifier]:
    """Each --adapter NAME=RUN trained with --task, loaded with its head and label space."""
    out = {}
    for name, path in runs.items():
        model, tok, space = load_run(str(path), trust_remote_code=trust_remote_code)
        out[name] = Classifier(model, tok, space)
    return out


def answers(c: Classifier, texts: list[str], max_tokens: int) -> tuple[list[dict], int]:
    """(one answer per text, the tokens read). Runs in a worker thread, one request at a time per model."""
    with c.lock:
        lengths = [len(ids) for ids in c.tokenizer(texts)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > max_tokens:
                raise APIError(
                    400,
                    f"input[{i}] is {n} tokens; this server accepts at most {max_tokens}",
                    code="context_length_exceeded",
                    param="input",
                )
        rows = predict(c.model, c.tokenizer, c.space, texts, max_length=max_tokens)
    data = [{"object": "classification", "index": i, **row} for i, row in enumerate(rows)]
    return data, sum(lengths)


def refuse_generation(name: str) -> APIError:
    return APIError(
        400,
        f"model {name!r} labels or scores text (trained with --task); POST /v1/classify with "
        '{"model": ..., "input": [...]}',
        param="model",
    )
