"""Bootstrap confidence intervals and a paired bootstrap test between two systems; the Holm correction;
Wilson intervals and Cohen's kappa for people's judgements."""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def bootstrap_ci(values, level: float = 0.95, seed: int = 0, digits: int = 2) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else 0.0,) * 2
    idx = np.random.default_rng(seed).integers(0, len(x), (RESAMPLES, len(x)))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return round(float(lo), digits), round(float(hi), digits)


def paired_test(after, before, seed: int = 0, digits: int = 2) -> dict:
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
        "change": round(float(d.mean()), digits),
        "ci": [round(float(lo), digits), round(float(hi), digits)],
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


# Two textbook formulas for people's judgements, written here rather than taken from scipy, statsmodels or
# scikit-learn: each of those is a dependency of 40-100 MB for a few lines, and both are tested against
# published values (tests/test_review.py).


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95 % by default): sound at small n and at 0 or n, where
    the normal approximation gives intervals outside [0, 1]."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items: agreement beyond chance (1 = always agree,
    0 = as often as chance would). None when chance agreement is 1 (both gave one and the same label)."""
    n = len(first)
    if n == 0 or n != len(second):
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    labels = set(first) | set(second)
    chance = sum((first.count(c) / n) * (second.count(c) / n) for c in labels)
    if chance >= 1.0:
        return None
    return round((observed - chance) / (1 - chance), 4)
