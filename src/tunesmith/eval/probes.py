"""Generalization and forgetting probes for `tunesmith eval`.

- Memorization: the same metric on a sample of the training set and on the held-out set. A
  model that scores far better on what it was trained on has learned those examples rather
  than the task; a gap above MEMORIZATION_GAP points (significant by a bootstrap test of the
  difference of means) gives a warning.
- Forgetting: a small general-knowledge probe set shipped with tunesmith (probe-data/), scored
  on the base model and on the tuned one: the perplexity of the reference answers (answer
  tokens only) and token F1 / exact match of the generated answers. The change is reported;
  perplexity up by more than FORGETTING_PPL_RATIO gives a warning.
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import numpy as np

from tunesmith.data.formats import load_examples
from tunesmith.eval.perplexity import score_rows
from tunesmith.models.chat import encode_chat, split_prompt
from tunesmith.models.loading import generate
from tunesmith.scoring.metrics import token_f1

PROBE_FILE = Path(__file__).parent / "probe-data" / "general.jsonl"
MEMORIZATION_GAP = 10.0  # points of the headline metric
FORGETTING_PPL_RATIO = 1.25


def answer_perplexity(model, tokenizer, conversations: list[list[dict]], batch_size: int = 8) -> float:
    """exp(mean cross-entropy over the last assistant turn's tokens), as training counts them."""
    enc = [encode_chat(tokenizer, c, train_on="last") for c in conversations]
    total, count = score_rows(model, tokenizer.pad_token_id, enc, batch_size)
    return math.exp(total / max(count, 1))


def probe_examples():
    return load_examples(str(PROBE_FILE), "probe set")


def run_probe(model, tokenizer, *, max_new_tokens: int = 32, batch_size: int = 16) -> dict:
    """Perplexity and generated-answer scores on the shipped probe set."""
    examples = probe_examples()
    prompts, refs = zip(*(split_prompt(ex.messages) for ex in examples))
    outs = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size)
    f1 = [token_f1(o.text, r) for o, r in zip(outs, refs)]
    # an answer counts as right when it contains the reference's words (models add a sentence around them)
    hit = [
        100.0 * all(w in o.text.lower() for w in r.lower().replace("the ", "").split())
        for o, r in zip(outs, refs)
    ]
    return {
        "n": len(examples),
        "perplexity": round(answer_perplexity(model, tokenizer, [ex.messages for ex in examples]), 3),
        "token_f1": round(statistics.fmean(f1), 2),
        "contains_answer": round(statistics.fmean(hit), 2),
        "outputs": [o.text for o in outs],
    }


def forgetting_report(before: dict, after: dict) -> dict:
    ratio = after["perplexity"] / before["perplexity"]
    out = {
        "before": {k: v for k, v in before.items() if k != "outputs"},
        "after": {k: v for k, v in after.items() if k != "outputs"},
        "perplexity_ratio": round(ratio, 3),
        "contains_answer_change": round(after["contains_answer"] - before["contains_answer"], 2),
        "token_f1_change": round(after["token_f1"] - before["token_f1"], 2),
    }
    out["warning"] = (
        f"general-knowledge perplexity rose {ratio:.2f}× after tuning (over {FORGETTING_PPL_RATIO}×): "
        "the model may be forgetting; try fewer epochs, a lower --lr or a smaller --lora-r"
        if ratio > FORGETTING_PPL_RATIO
        else None
    )
    return out


def sample_train(examples: list, n: int, seed: int = 13) -> list:
    if len(examples) <= n:
        return list(examples)
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), n))]


def memorization_report(
    train_values: list[float], test_values: list[float], metric: str, seed: int = 0
) -> dict:
    """Gap between the training sample and the held-out set, with a bootstrap interval of the gap."""
    a, b = np.asarray(train_values, float), np.asarray(test_values, float)
    rng = np.random.default_rng(seed)
    gaps = [
        a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean()
        for _ in range(2000)
    ]
    lo, hi = np.quantile(gaps, [0.025, 0.975])
    gap = float(a.mean() - b.mean())
    out = {
        "metric": metric,
        "train": round(float(a.mean()), 2),
        "held_out": round(float(b.mean()), 2),
        "gap": round(gap, 2),
        "gap_ci95": [round(float(lo), 2), round(float(hi), 2)],
        "n_train": len(a),
        "n_held_out": len(b),
    }
    out["warning"] = (
        f"{metric} is {gap:.1f} points higher on training examples than on held-out ones "
        f"(95 % interval {lo:.1f} to {hi:.1f}): the model may be memorizing; try fewer epochs or more data"
        if gap > MEMORIZATION_GAP and lo > 0
        else None
    )
    return out
