"""Near-duplicate detection: MinHash signatures over word 5-gram shingles, LSH banding to
find candidate pairs, exact Jaccard to confirm them.

Our own ~60 lines rather than a dependency: datasketch would pull in scipy for what is a
few numpy lines here, and the exact-Jaccard confirmation means no false positives.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

PRIME = (1 << 31) - 1
WORD = re.compile(r"\w+")


def shingles(text: str, k: int = 5) -> set[str]:
    words = WORD.findall(text.lower())
    if len(words) <= k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHasher:
    def __init__(self, num_perm: int = 128, bands: int = 32, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, PRIME, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, PRIME, num_perm, dtype=np.uint64)
        self.bands, self.rows = bands, num_perm // bands

    def signature(self, sh: set[str]) -> np.ndarray:
        if not sh:
            return np.full(len(self.a), PRIME, dtype=np.uint64)
        x = np.fromiter(
            (
                int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") & PRIME
                for s in sh
            ),
            dtype=np.uint64,
            count=len(sh),
        )
        return ((x[:, None] * self.a + self.b) % PRIME).min(axis=0)

    def band_keys(self, sig: np.ndarray) -> list[bytes]:
        return [bytes([i]) + sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]


def near_duplicates(
    texts: list[str], threshold: float = 0.8, against: list[str] | None = None
) -> list[tuple[int, int, float]]:
    """Pairs (i, j, jaccard) with jaccard >= threshold.

    Without `against`: pairs within `texts`, i < j (j is the later one, to drop).
    With `against`: (i in texts, j in against) pairs across the two lists.
    """
    mh = MinHasher()
    sh = [shingles(t) for t in texts]
    other = [shingles(t) for t in against] if against is not None else None
    buckets: dict[bytes, list[int]] = {}
    if other is not None:
        for j, s in enumerate(other):
            for key in mh.band_keys(mh.signature(s)):
                buckets.setdefault(key, []).append(j)
    found: dict[tuple[int, int], float] = {}
    for i, s in enumerate(sh):
        for key in mh.band_keys(mh.signature(s)):
            cands = buckets.get(key, [])
            for j in cands:
                pair = (i, j) if other is not None else (j, i)
                if pair in found:
                    continue
                J = jaccard(s, other[j] if other is not None else sh[j])
                if J >= threshold:
                    found[pair] = J
            if other is None:
                buckets.setdefault(key, []).append(i)
    return sorted((i, j, round(J, 3)) for (i, j), J in found.items())
