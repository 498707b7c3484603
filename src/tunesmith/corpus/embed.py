"""The embedding retriever of `docs index --embed` (issue 39, part 4): passages and queries as vectors
(models/encoder.py, default the `minilm-l6` alias), and the fusion of two rankings for `hybrid`.

Vectors are float32 and unit length, so a dot product is the cosine. Retrieval is exact (a product with
every passage's vector; 100,000 passages x 384 dimensions are 154 MB). On QMSum's 1,184 passages a query
took 10.8 ms on the 2-core EPYC, most of it encoding the query (benchmarks/RESULTS.md); an approximate
index would not repay its complexity at this size.
"""

from __future__ import annotations


def rrf(rankings: list[list[int]], k: int = 60) -> list[tuple[float, int]]:
    """Reciprocal rank fusion (Cormack et al. 2009): Σ 1 / (k + rank) over the rankings, best first. It
    needs no score scaling between BM25 and cosine, which live on different scales."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for r, i in enumerate(ranking):
            score[i] = score.get(i, 0.0) + 1.0 / (k + r + 1)
    return sorted(((s, i) for i, s in score.items()), key=lambda x: (-x[0], x[1]))
