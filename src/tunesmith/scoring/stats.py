"""Bootstrap confidence intervals and a paired bootstrap test between two systems."""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def bootstrap_ci(values, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else 0.0,) * 2
    idx = np.random.default_rng(seed).integers(0, len(x), (RESAMPLES, len(x)))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return round(float(lo), 2), round(float(hi), 2)


def paired_test(after, before, seed: int = 0) -> dict:
    """Paired bootstrap on per-example differences: mean change, its 95 % interval, a two-sided p-value."""
    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if len(d) < 2:
        return {"change": float(d.mean()) if len(d) else 0.0, "ci": None, "p": None, "significant": False}
    idx = np.random.default_rng(seed).integers(0, len(d), (RESAMPLES, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    # how often a resample lands on the other side of zero, both tails
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    if d.std() == 0:
        p = 1.0 if d.mean() == 0 else 0.0
    return {
        "change": round(float(d.mean()), 2),
        "ci": [round(float(lo), 2), round(float(hi), 2)],
        "p": round(p, 4),
        "significant": bool(p < 0.05),
    }


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, kept monotone)."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(order), 0.0, {}
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        out[k] = running
    return out
