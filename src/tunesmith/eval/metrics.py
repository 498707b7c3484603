"""Text-similarity metrics (ROUGE via rouge-score), scaled to 0-100."""

from __future__ import annotations

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_scorer = None


def rouge(prediction: str, reference: str) -> dict[str, float]:
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    # rougeLsum treats newlines as sentence breaks, which suits bullet notes
    s = _scorer.score(reference, prediction)
    return {k: round(100 * s[k].fmeasure, 2) for k in ROUGE_TYPES}
