"""The systems `tunesmith eval --systems` compares, all with the same decoding:

  base        the base model on the prompts as they are (zero-shot)
  prompted    the base model with your system prompt (--system or --system-file)
  few-shot:K  the base model with K training examples as earlier turns (the same K for every prompt)
  rag:K       the base model with the K training examples most like this prompt (BM25) as earlier turns
  tuned       the adapter (--adapter)

Prompt-side systems can be combined with the system prompt by suffixing `+prompted`, e.g.
`few-shot:3+prompted`, and any system with the K passages of a document index most like the prompt by
suffixing `+docs:K` (`--docs INDEX`, built by `tunesmith docs index`): `base+docs:3`, `tuned+docs:3`.
The passages go before the prompt's last user turn, numbered, each with its file and place, and the
model is asked to cite them as [n]; each answer's row keeps which passages it was given.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass

from tunesmith.corpus.cite import retrieve
from tunesmith.errors import UserError

KINDS = ("base", "prompted", "few-shot", "rag", "tuned")


@dataclass(frozen=True)
class System:
    name: str  # as the user wrote it, e.g. "rag:3"
    kind: str
    k: int = 0
    prompted: bool = False  # put the user's system prompt first
    docs: int = 0  # passages of the document index (--docs) given with each prompt

    @property
    def uses_adapter(self) -> bool:
        return self.kind == "tuned"

    @property
    def needs_train(self) -> bool:
        return self.kind in ("few-shot", "rag")


def parse_systems(spec: str) -> list[System]:
    out = []
    for raw in [s.strip() for s in spec.split(",") if s.strip()]:
        head, *extras = raw.split("+")
        docs = [int(x[5:]) for x in extras if x.startswith("docs:") and x[5:].isdigit() and int(x[5:]) > 0]
        if (
            len(docs) + extras.count("prompted") != len(extras)
            or len(docs) > 1
            or extras.count("prompted") > 1
        ):
            raise UserError(
                f"--systems {raw}: '+prompted' and '+docs:K' can be added to a system (e.g. rag:3+prompted, "
                "tuned+docs:3)"
            )
        plus = "prompted" in extras
        kind, colon, k = head.partition(":")
        if kind not in KINDS:
            raise UserError(
                f"--systems {raw}: unknown system {kind!r}; choose from base, prompted, few-shot:K, rag:K, "
                "tuned"
            )
        if kind in ("few-shot", "rag"):
            if not colon or not k.isdigit() or int(k) < 1:
                raise UserError(f"--systems {raw}: give how many examples, e.g. {kind}:3")
            out.append(System(raw, kind, int(k), plus, docs[0] if docs else 0))
        else:
            if colon:
                raise UserError(f"--systems {raw}: {kind} takes no ':K'")
            out.append(System(raw, kind, 0, kind == "prompted" or plus, docs[0] if docs else 0))
    names = [s.name for s in out]
    if not out or len(set(names)) != len(names):
        raise UserError(f"--systems {spec}: give each system once, e.g. base,prompted,few-shot:3,rag:3,tuned")
    return out


_WORD = re.compile(r"\w+")


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1]


class BM25:
    """Okapi BM25 over the training prompts (k1 1.5, b 0.75): a few lines, no index to build."""

    def __init__(self, docs: list[str], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.tf = [Counter(_terms(d)) for d in docs]
        self.len = [sum(c.values()) for c in self.tf]
        self.avg = sum(self.len) / max(1, len(self.len))
        df = Counter(t for c in self.tf for t in c)
        n = len(docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def scores(self, query: str) -> list[float]:
        q = set(_terms(query))
        out = []
        for tf, n in zip(self.tf, self.len):
            s = 0.0
            for t in q:
                f = tf.get(t)
                if f:
                    s += (
                        self.idf[t] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * n / self.avg))
                    )
            out.append(s)
        return out

    def top(self, query: str, k: int, exclude: set[int] = frozenset()) -> list[int]:
        s = self.scores(query)
        return sorted((i for i in range(len(s)) if i not in exclude), key=lambda i: (-s[i], i))[:k]


def _text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] != "assistant")


def _shots(train: list[list[dict]], idx: list[int]) -> list[dict]:
    """Each chosen training example as earlier turns: its non-system messages, answer included."""
    return [m for i in idx for m in train[i] if m["role"] != "system"]


def build_prompts(
    system: System,
    prompts: list[list[dict]],
    *,
    train: list[list[dict]] | None = None,
    system_prompt: str | None = None,
    seed: int = 13,
    docs=None,
) -> tuple[list[list[dict]], list[list[int]], list[list[dict]]]:
    """The conversations this system is given, which training examples each one carries, and which
    passages of the document index `docs` (corpus.index.Index)."""
    if system.docs and docs is None:
        raise UserError(
            f"--systems {system.name}: needs a document index: --docs INDEX (`tunesmith docs index FOLDER "
            "--out INDEX` builds one)"
        )
    if system.prompted and not system_prompt:
        raise UserError(
            f"--systems {system.name}: needs your system prompt: --system TEXT or --system-file FILE"
        )
    if system.needs_train:
        if not train:
            raise UserError(
                f"--systems {system.name}: needs training examples: --train FILE (default: train.jsonl "
                "beside --data)"
            )
        if system.k > len(train):
            raise UserError(
                f"--systems {system.name}: asks for {system.k} examples; the training file has {len(train)}"
            )
    fixed = (
        sorted(random.Random(seed).sample(range(len(train)), system.k)) if system.kind == "few-shot" else []
    )
    index = BM25([_text(t) for t in train]) if system.kind == "rag" else None
    out, used, cited = [], [], []
    for p in prompts:
        idx = index.top(_text(p), system.k) if index else fixed
        p, given = retrieve(docs, p, system.docs) if system.docs else (p, [])
        cited.append([{k: g[k] for k in ("file", "where", "score")} for g in given])
        head = (
            [{"role": "system", "content": system_prompt}]
            if system.prompted
            else [m for m in p if m["role"] == "system"]
        )
        out.append(
            head + _shots(train, idx) + [m for m in p if m["role"] != "system"]
            if idx
            else head + [m for m in p if m["role"] != "system"]
        )
        used.append(list(idx))
    return out, used, cited
