"""Answering from documents with citations, one rule for every command that does it (`eval` and `pick`
with +docs:K, `generate`, `chat` and `serve` with --docs): the K passages an index ranks best for the
last user turn go before that turn, numbered, each with its file and place, and the model is asked to
cite them as [n].

`check_citations` reads an answer's [n] marks back: which passages it cites, and which marks point at
no passage it was given (a model that invents [7] when it was given three). It cannot tell whether a
cited passage supports the sentence; it tells whether the citation is one the reader can follow.
"""

from __future__ import annotations

import re

from tunesmith.corpus.index import Index
from tunesmith.errors import UserError

PASSAGES_HEAD = "Passages from the documents (cite one as [n] where you use it):\n"
MARK = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def open_docs(index: str | None, passages: int) -> Index | None:
    """--docs INDEX with --passages K (`generate`, `chat`, `serve`): the index, or None without --docs."""
    if not index:
        return None
    if passages < 1:
        raise UserError(f"--passages {passages}: at least 1")
    return Index(index)


def last_user(messages: list[dict]) -> str:
    """The question a retrieval answers: the last user turn (not the system prompt, not earlier turns)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def with_passages(messages: list[dict], passages: list[dict]) -> list[dict]:
    """The conversation with the passages, numbered and placed, before its last user turn's text."""
    block = PASSAGES_HEAD + "".join(
        f"[{n}] {p['file']} ({p['where']}): {p['text']}\n" for n, p in enumerate(passages, 1)
    )
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return [{**m, "content": f"{block}\n{m['content']}"} if i == last else m for i, m in enumerate(messages)]


def retrieve(index, messages: list[dict], k: int) -> tuple[list[dict], list[dict]]:
    """(the conversation with the K best passages for its last user turn, those passages with their
    scores): what a model is given, and what its answer may cite."""
    hits = index.search(last_user(messages), k)
    given = [{"n": n, "file": p["file"], "where": p["where"], "score": s, "text": p["text"]}
             for n, (s, p) in enumerate(hits, 1)]  # fmt: skip
    return (with_passages(messages, [p for _, p in hits]) if hits else messages), given


def check_citations(answer: str, given: int) -> dict:
    """The [n] marks of an answer: the passages cited (in order, once each) and the marks that name no
    passage of the `given` ones."""
    cited, bad = [], []
    for m in MARK.finditer(answer):
        for x in m.group(1).split(","):
            n = int(x)
            (cited if 1 <= n <= given else bad).append(n)
    return {"cited": list(dict.fromkeys(cited)), "unknown": list(dict.fromkeys(bad))}


def sources(given: list[dict], answer: str) -> dict:
    """What an answer from documents carries besides its text (`generate --json`, `serve`): the passages it
    was given and the citations it makes of them."""
    return {"passages": given, "citations": check_citations(answer, len(given))}


def sources_line(given: list[dict], answer: str) -> str:
    """What `generate` and `chat` print under an answer: each cited passage's file and place, and any mark
    that points nowhere."""
    c = check_citations(answer, len(given))
    used = [p for p in given if p["n"] in c["cited"]]
    out = "sources: " + ("; ".join(f"[{p['n']}] {p['file']} ({p['where']})" for p in used) or "none cited")
    if c["unknown"]:
        out += f"; cites {', '.join(f'[{n}]' for n in c['unknown'])}, which it was not given"
    return out
