"""Per-example text metrics, all on a 0-100 scale: ROUGE (rouge-score), BLEU and chrF
(sacrebleu, sentence level), token F1 and exact match (SQuAD-style normalization)."""

from __future__ import annotations

import re
import string
from collections import Counter

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
TEXT_METRICS = ROUGE_TYPES + ("bleu", "chrf", "token_f1", "exact_match")
_scorer = None
_bleu = None
_chrf = None


def rouge(prediction: str, reference: str) -> dict[str, float]:
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    # rougeLsum treats newlines as sentence breaks, which suits bullet notes
    s = _scorer.score(reference, prediction)
    return {k: round(100 * s[k].fmeasure, 2) for k in ROUGE_TYPES}


def _normalize(text: str) -> list[str]:
    text = text.lower()
    text = "".join(c for c in text if c not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def token_f1(prediction: str, reference: str) -> float:
    p, r = _normalize(prediction), _normalize(reference)
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r:
        return 100.0 if p == r else 0.0
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return round(100 * 2 * prec * rec / (prec + rec), 2)


def scores(prediction: str, reference: str) -> dict[str, float]:
    global _bleu, _chrf
    if _bleu is None:
        from sacrebleu.metrics import BLEU, CHRF

        _bleu, _chrf = BLEU(effective_order=True), CHRF()
    out = rouge(prediction, reference)
    out["bleu"] = round(_bleu.sentence_score(prediction, [reference]).score, 2)
    out["chrf"] = round(_chrf.sentence_score(prediction, [reference]).score, 2)
    out["token_f1"] = token_f1(prediction, reference)
    out["exact_match"] = 100.0 if _normalize(prediction) == _normalize(reference) else 0.0
    return out
