"""Measures of labels and scores, each with a percentile bootstrap 95 % interval over the examples, and
the paired bootstrap between two systems on the same examples (the same resamples for both, so the
interval is of the difference; stats.py's test for per-example means, here also for F1, which is not a
mean of per-example values).

One class: accuracy, macro-F1 (the unweighted mean of the classes' F1, so a rare class counts as much
as a common one), per-class precision, recall and F1, the confusion matrix (rows: the true class), and
the expected calibration error (10 equal-width bins of the top probability: |accuracy - confidence|
weighted by the bin's share) when the system gives probabilities. Several classes: micro-F1 over every
(example, class) decision, macro-F1, and exact match (the whole set right). A number: MSE, RMSE, MAE,
Pearson's and Spearman's correlation, and R² against the test set's own mean.
"""

from __future__ import annotations

import numpy as np

from tunesmith.scoring.stats import RESAMPLES

HIGHER = {
    "accuracy",
    "macro_f1",
    "micro_f1",
    "exact_match",
    "pearson",
    "spearman",
    "r2",
}  # else lower is better


def _f1s(tp, fp, fn):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


def _classify(gold: np.ndarray, pred: np.ndarray, k: int) -> dict:
    cm = np.bincount(gold * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    present = cm.sum(1) > 0  # macro over the classes the test set has
    f1 = _f1s(tp, cm.sum(0) - tp, cm.sum(1) - tp)
    return {
        "accuracy": float(100 * tp.sum() / max(len(gold), 1)),
        "macro_f1": float(100 * f1[present].mean()),
    }


def _multilabel(gold: np.ndarray, pred: np.ndarray) -> dict:
    tp, fp, fn = (gold & pred).sum(0), (~gold & pred).sum(0), (gold & ~pred).sum(0)
    micro = _f1s(tp.sum(), fp.sum(), fn.sum())
    present = gold.sum(0) > 0
    return {
        "micro_f1": 100 * float(micro),
        "macro_f1": 100 * float(_f1s(tp, fp, fn)[present].mean()) if present.any() else 0.0,
        "exact_match": 100 * float((gold == pred).all(1).mean()),
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    order = x.argsort(kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):  # ties share their mean rank
        same = x == v
        if same.sum() > 1:
            r[same] = r[same].mean()
    return r


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _regress(gold: np.ndarray, pred: np.ndarray) -> dict:
    err = pred - gold
    mse = float((err**2).mean())
    var = float(gold.var())
    return {
        "mse": mse,
        "rmse": mse**0.5,
        "mae": float(np.abs(err).mean()),
        "pearson": _corr(gold, pred),
        "spearman": _corr(_ranks(gold), _ranks(pred)),
        "r2": 1 - mse / var if var > 0 else 0.0,
    }


def measure(task: str, gold, pred, k: int = 0) -> dict:
    """The task's measures of one system's predictions: class ids, 0/1 rows (multilabel) or floats."""
    if task == "classify":
        return _classify(np.asarray(gold), np.asarray(pred), k)
    if task == "multilabel":
        return _multilabel(np.asarray(gold, dtype=bool), np.asarray(pred, dtype=bool))
    return _regress(np.asarray(gold, dtype=float), np.asarray(pred, dtype=float))


def _resamples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (RESAMPLES, n))


def with_intervals(task: str, gold, pred, k: int = 0, digits: int = 4) -> dict:
    """measure() rounded, with "ci95": {measure: [low, high]} from the bootstrap over examples."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    point = measure(task, gold, pred, k)
    draws = [measure(task, gold[i], pred[i], k) for i in _resamples(len(gold))]
    out = {m: round(v, digits) + 0.0 for m, v in point.items()}  # + 0.0: no "-0"
    out["ci95"] = {
        m: [round(float(np.quantile([d[m] for d in draws], q)), digits) + 0.0 for q in (0.025, 0.975)]
        for m in point
    }
    return out


def paired(task: str, gold, pred_a, pred_b, k: int = 0, digits: int = 4) -> dict:
    """a minus b on every measure, over the same resamples: the change, its 95 % interval, a two-sided p."""
    gold, a, b = np.asarray(gold), np.asarray(pred_a), np.asarray(pred_b)
    base_a, base_b = measure(task, gold, a, k), measure(task, gold, b, k)
    diffs: dict[str, list[float]] = {m: [] for m in base_a}
    for i in _resamples(len(gold)):
        ma, mb = measure(task, gold[i], a[i], k), measure(task, gold[i], b[i], k)
        for m in diffs:
            diffs[m].append(ma[m] - mb[m])
    out = {}
    for m, d in diffs.items():
        d = np.asarray(d)
        p = min(1.0, 2 * min(float((d <= 0).mean()), float((d >= 0).mean())))
        if d.std() == 0:
            p = 1.0 if d.mean() == 0 else 0.0
        change = base_a[m] - base_b[m]
        out[m] = {
            "change": round(change, digits),
            "ci": [round(float(np.quantile(d, q)), digits) for q in (0.025, 0.975)],
            "p": round(p, 4),
            "significant": bool(p < 0.05),
            "better": bool(p < 0.05 and (change > 0) == (m in HIGHER)),
        }
    return out


def per_class(gold, pred, names: list[str]) -> tuple[list[dict], list[list[int]]]:
    """Precision, recall, F1 and support of each class (one class per example), and the confusion matrix."""
    k = len(names)
    gold, pred = np.asarray(gold), np.asarray(pred)
    cm = np.bincount(gold * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    prec = np.where(cm.sum(0) > 0, tp / np.maximum(cm.sum(0), 1), 0.0)
    rec = np.where(cm.sum(1) > 0, tp / np.maximum(cm.sum(1), 1), 0.0)
    f1 = _f1s(tp, cm.sum(0) - tp, cm.sum(1) - tp)
    rows = [
        {
            "class": c,
            "precision": round(100 * float(p), 2),
            "recall": round(100 * float(r), 2),
            "f1": round(100 * float(f), 2),
            "support": int(s),
        }
        for c, p, r, f, s in zip(names, prec, rec, f1, cm.sum(1))
    ]
    return rows, cm.tolist()


def calibration_error(gold, probs, bins: int = 10) -> float:
    """Expected calibration error (%) of the top class's probability."""
    probs = np.asarray(probs, dtype=float)
    conf, pred = probs.max(1), probs.argmax(1)
    right = pred == np.asarray(gold)
    edges = np.minimum((conf * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        sel = edges == b
        if sel.any():
            err += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return round(100 * err, 2)
