"""People's judgements on model outputs, kept in the run registry beside the runs they judge.

A review queue is made from registered evals on one test set: one item per example, with the
prompt (the example's own messages, read from the test file the eval recorded), the reference and
every system's output with its scores. A/B judgements compare the queue's two outputs (`a`, `b`),
shown in a random order that is recorded with the choice; ratings (1-5, tags, a comment) and
corrections (the answer as it should have been) are on any one output. Each judgement is one short
transaction of its own, written when it is made, so a crash or a closed tab loses nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import load_examples, messages_digest
from tunesmith.errors import NotFound, UserError
from tunesmith.eval.errors import newest_eval
from tunesmith.eval.rows import same_test
from tunesmith.models.chat import last_assistant
from tunesmith.registry.captures import captured
from tunesmith.registry.db import Registry
from tunesmith.review.stored import read_stored

KINDS = ("ab", "rating", "correction", "accept", "reject")
# what an item becomes in `review export --sft`: its newest verdict wins
VERDICTS = ("correction", "accept", "reject")
ANSWER = "answer"  # the one output of an item that `serve --capture` kept
DRAFT = "draft"  # the one output of an item that `data generate` drafted
TIE = "tie"
MAX_TEXT = 100_000  # characters of a correction or a comment: a whole note, not a file


@dataclass
class Judgement:
    """One person's judgement of one item. ab: `left`/`right` are the labels in the order shown and
    `choice` one of them or "tie"; rating: `label` and `rating` 1-5 with optional `tags`/`comment`;
    correction: `label` (the output corrected, or None for an answer written from scratch) and `text`;
    accept / reject: `label`, the output taken as it is as a training answer, or refused."""

    item: int
    reviewer: str
    kind: str
    left: str | None = None
    right: str | None = None
    choice: str | None = None
    label: str | None = None
    rating: int | None = None
    tags: list[str] = field(default_factory=list)
    comment: str | None = None
    text: str | None = None


# ---------------------------------------------------------------- making a queue


def label_of(reg: Registry, ev: dict, system: str, several: bool) -> str:
    """What a reviewer and the stats call an output: the system (base, tuned, few-shot:3), prefixed with
    the evaluated run's name when the queue comes from several evals (v9/tuned, v10/tuned)."""
    if not several:
        return system
    parent = next((p for p in ev["parents"] if p["relation"] == "evaluated"), None)
    who = reg.get(parent["parent"])["name"] if parent and parent["parent"] else ev["name"]
    return system if who == system else f"{who}/{system}"


def prompt_messages(example: dict, cache: dict) -> list[dict]:
    """The example's own prompt (its messages before the answer, without a system's few-shot or retrieved
    context) from the test file at the line the eval recorded; the input text alone when the file changed."""
    path, line = example.get("path"), example.get("line")
    if path not in cache:
        try:
            cache[path] = {e.line: e for e in load_examples(path, "test file", kind=None)}
        except (OSError, UserError):
            cache[path] = {}
    ex = cache[path].get(line)
    if ex is not None:
        msgs = ex.messages[: last_assistant(ex.messages)]
        users = [m for m in msgs if m["role"] == "user"]
        if users and users[-1]["content"] == example.get("input"):
            return msgs
    return [{"role": "user", "content": example.get("input") or ""}]


def items_of(reg: Registry, evals: list[dict]) -> list[dict]:
    """One item per example of the evals (which must share their test set), with every system's output."""
    systems = [(ev, s) for ev in evals for s in (ev["result"].get("systems") or [ev["result"]])]
    first = systems[0][1]
    for ev, s in systems[1:]:
        why = same_test(first, s)
        if why:
            raise UserError(
                f"review add: eval {ev['id']} ({ev['name']}) is not on the same test examples as "
                f"{evals[0]['id']} with the same decoding ({why}); a queue compares outputs for the same "
                "prompts"
            )
    cache: dict = {}
    out = []
    for i, ex in enumerate(first["examples"]):
        outputs = {}
        for ev, s in systems:
            y = s["examples"][i]
            label = label_of(reg, ev, s["system"], len(evals) > 1)
            outputs[label] = {
                k: y.get(k) for k in ("output", "scores", "stopped", "new_tokens", "style", "format_ok")
            }
        prompt = prompt_messages(ex, cache)
        out.append(
            {"example": i, "path": ex.get("path"), "line": ex.get("line"), "prompt": prompt,
             "digest": str(messages_digest(prompt)), "reference": ex.get("reference"), "outputs": outputs}
        )  # fmt: skip
    return out


def add_queue(reg: Registry, refs: list[str], name: str | None = None, pair: list[str] | None = None) -> dict:
    """A queue from one eval with several systems (base,tuned) or several evals of one test set."""
    evals = []
    for ref in refs:
        r = reg.get(reg.find(ref))
        if r["kind"] != "eval":
            r = _newest_eval_of(reg, r)
        evals.append(r)
    items = items_of(reg, evals)
    labels = list(items[0]["outputs"])
    # one output (a single-system eval): ratings and corrections only, A and B the same
    a, b = pair or (labels[:2] if len(labels) > 1 else [labels[0], labels[0]])
    for x in (a, b):
        if x not in labels:
            raise UserError(f"--pair {a},{b}: {x!r} is not one of the outputs ({', '.join(labels)})")
    name = name or evals[-1]["name"]
    if reg.db.execute("SELECT 1 FROM review_queues WHERE name = ?", (name,)).fetchone():
        raise UserError(f"review add: a queue named {name!r} exists; choose another --name")
    sources = [{"eval": e["id"], "name": e["name"]} for e in evals]
    with reg.tx() as db:
        db.execute(
            "INSERT INTO review_queues (name, a, b, sources, created) VALUES (?, ?, ?, ?, ?)",
            (name, a, b, json.dumps(sources), time.time()),
        )
        for it in items:
            db.execute(
                "INSERT INTO review_items (queue, example, path, line, prompt, digest, reference, outputs) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, it["example"], it["path"], str(it["line"]), json.dumps(it["prompt"]), it["digest"],
                 it["reference"], json.dumps(it["outputs"])),
            )  # fmt: skip
    return {"name": name, "a": a, "b": b, "items": len(items), "labels": labels, "sources": sources}


def add_captures(reg: Registry, name: str | None = None, since: float | None = None) -> dict:
    """A queue of what `serve --capture` kept (ratings and corrections: one answer per item); a user's
    correction sent with the feedback is shown as the item's reference, for a reviewer to take or not."""
    caught = captured(reg, since)
    if not caught:
        raise UserError("review add --captures: nothing captured" + (" since then" if since else "") +
                        "; start the server with `tunesmith serve --capture`")  # fmt: skip
    name = name or time.strftime("captured-%Y%m%d-%H%M")
    if reg.db.execute("SELECT 1 FROM review_queues WHERE name = ?", (name,)).fetchone():
        raise UserError(f"review add: a queue named {name!r} exists; choose another --name")
    with reg.tx() as db:
        db.execute(
            "INSERT INTO review_queues (name, a, b, sources, created) VALUES (?, ?, ?, ?, ?)",
            (name, ANSWER, ANSWER, json.dumps([{"captures": len(caught), "since": since}]), time.time()),
        )
        for i, c in enumerate(caught):
            req = c["request"]
            prompt = req.get("messages") or [{"role": "user", "content": req.get("prompt")}]
            prompt = [{"role": m["role"], "content": _text(m["content"])} for m in prompt]
            out = {ANSWER: {"output": c["response"]["text"], "model": c["model"], "run": c["run"],
                            "feedback": c["rating"]}}  # fmt: skip
            db.execute(
                "INSERT INTO review_items (queue, example, path, line, prompt, digest, reference, outputs, "
                "capture) VALUES (?, ?, NULL, NULL, ?, ?, ?, ?, ?)",
                (name, i, json.dumps(prompt), str(messages_digest(prompt)), c["correction"], json.dumps(out),
                 c["id"]),
            )  # fmt: skip
    return {"name": name, "a": ANSWER, "b": ANSWER, "items": len(caught), "labels": [ANSWER], "sources": []}


def add_stored(reg: Registry, path: str, name: str | None = None, filters: dict | None = None) -> dict:
    """A queue of the completions a hosted API stored, from their JSONL export (review/stored.py): one
    answer per item, with the model and metadata it was stored with."""
    rows, total = read_stored(path, filters or {})
    p = Path(path)
    source = {"stored": str(p.resolve()), "lines": total, "items": len(rows), "metadata": filters or {}}
    items = [(n, prompt, {ANSWER: {"output": answer, "model": info["model"], "metadata": info["metadata"]}})
             for n, prompt, answer, info in rows]  # fmt: skip
    return _one_answer_queue(reg, name or f"stored-{p.stem}", ANSWER, source, p, items)


def add_drafts(reg: Registry, path: str | Path, name: str | None = None) -> dict:
    """A queue of what `tunesmith data generate` drafted: one answer per item, to accept, correct or reject;
    each draft's style check and teacher go with it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"review add --drafts {p}: no such file")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            msgs, meta = rec["messages"], rec["draft"]
            ok = msgs[-1]["role"] == "assistant" and all(isinstance(m["content"], str) for m in msgs)
        except (ValueError, KeyError, TypeError, IndexError):
            ok = False
        if not ok:
            raise UserError(f"review add --drafts {p}:{n}: not a draft `tunesmith data generate` wrote")
        style = {r: False for r in meta.get("failed_rules") or []}
        out = {DRAFT: {"output": msgs[-1]["content"], "teacher": meta.get("teacher"), "style": style,
                       **({"format_ok": meta["style_ok"]} if "style_ok" in meta else {})}}  # fmt: skip
        rows.append((n, msgs[:-1], out))
    if not rows:
        raise UserError(f"review add --drafts {p}: no drafts in it")
    source = {"drafts": str(p.resolve()), "items": len(rows)}
    return _one_answer_queue(reg, name or f"drafts-{p.stem}", DRAFT, source, p, rows)


def _one_answer_queue(reg: Registry, name: str, label: str, source: dict, p: Path, rows: list) -> dict:
    """A queue of one answer per item, from the lines of a file: rows of (line, prompt, outputs)."""
    if reg.db.execute("SELECT 1 FROM review_queues WHERE name = ?", (name,)).fetchone():
        raise UserError(f"review add: a queue named {name!r} exists; choose another --name")
    with reg.tx() as db:
        db.execute(
            "INSERT INTO review_queues (name, a, b, sources, created) VALUES (?, ?, ?, ?, ?)",
            (name, label, label, json.dumps([source]), time.time()),
        )
        for i, (n, prompt, out) in enumerate(rows):
            db.execute(
                "INSERT INTO review_items (queue, example, path, line, prompt, digest, reference, outputs) "
                "VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                (name, i, str(p.resolve()), str(n), json.dumps(prompt), str(messages_digest(prompt)),
                 json.dumps(out)),
            )  # fmt: skip
    return {"name": name, "a": label, "b": label, "items": len(rows), "labels": [label], "sources": []}


def _text(content) -> str:
    """A captured message's content: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")


def _newest_eval_of(reg: Registry, run: dict) -> dict:
    """A training run stands for its newest registered eval."""
    ev = newest_eval(reg, run)
    if ev is not None:
        return ev
    raise UserError(f"review add {run['name']}: run {run['id']} has no registered eval; run `tunesmith eval`")


# ---------------------------------------------------------------- reading


def queues(reg: Registry) -> list[dict]:
    rows = reg.db.execute(
        "SELECT q.name, q.a, q.b, q.sources, q.created, COUNT(i.id) AS items, "
        "(SELECT COUNT(*) FROM judgements j JOIN review_items k ON j.item = k.id WHERE k.queue = q.name) "
        "AS judgements FROM review_queues q LEFT JOIN review_items i ON i.queue = q.name "
        "GROUP BY q.name ORDER BY q.created DESC"
    )
    return [{**dict(r), "sources": json.loads(r["sources"])} for r in rows]


def queue(reg: Registry, name: str) -> dict:
    row = reg.db.execute("SELECT * FROM review_queues WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = ", ".join(q["name"] for q in queues(reg)) or "none yet: `tunesmith review add EVAL`"
        raise NotFound(f"review queue {name!r}: no such queue (queues: {known})")
    return {**dict(row), "sources": json.loads(row["sources"])}


def _item(row) -> dict:
    d = dict(row)
    d["prompt"], d["outputs"] = json.loads(d["prompt"]), json.loads(d["outputs"])
    return d


def items(reg: Registry, name: str) -> list[dict]:
    queue(reg, name)
    rows = reg.db.execute("SELECT * FROM review_items WHERE queue = ? ORDER BY example", (name,))
    return [_item(r) for r in rows]


def item(reg: Registry, item_id: int) -> dict:
    row = reg.db.execute("SELECT * FROM review_items WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        raise NotFound(f"review item {item_id}: no such item")
    return _item(row)


def judgements(reg: Registry, name: str | None = None, kind: str | None = None) -> list[dict]:
    sql = "SELECT j.*, i.queue FROM judgements j JOIN review_items i ON j.item = i.id WHERE 1 = 1"
    args: list = []
    if name:
        sql, args = sql + " AND i.queue = ?", [*args, name]
    if kind:
        sql, args = sql + " AND j.kind = ?", [*args, kind]
    rows = reg.db.execute(sql + " ORDER BY j.at, j.id", args)
    return [{**dict(r), "tags": json.loads(r["tags"] or "[]")} for r in rows]


# ---------------------------------------------------------------- writing


def check_types(j: Judgement) -> None:
    """Fields of the right type, whoever built the judgement (the web app from JSON, a script)."""
    if not isinstance(j.item, int) or isinstance(j.item, bool):
        raise UserError("item: the item's id (an integer)")
    for key in ("reviewer", "kind", "left", "right", "choice", "label", "comment", "text"):
        value = getattr(j, key)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{key}: a string")


def check(j: Judgement, it: dict, q: dict) -> None:
    """A judgement that can be stored, or a UserError naming the field (the web app turns it into a 400)."""
    if not j.reviewer or not j.reviewer.strip() or len(j.reviewer) > 100:
        raise UserError("reviewer: give a name (1-100 characters); every judgement carries one")
    if j.kind not in KINDS:
        raise UserError(f"kind {j.kind!r}: one of {', '.join(KINDS)}")
    labels = set(it["outputs"])
    if j.kind == "ab":
        if {j.left, j.right} != {q["a"], q["b"]} or q["a"] == q["b"]:
            raise UserError(f"left/right: the queue compares {q['a']} and {q['b']}; got {j.left}, {j.right}")
        if j.choice not in (j.left, j.right, TIE):
            raise UserError(f"choice {j.choice!r}: {j.left}, {j.right} or {TIE}")
    elif j.kind in ("rating", "accept", "reject"):
        if j.label not in labels:
            raise UserError(f"label {j.label!r}: one of {', '.join(sorted(labels))}")
        bad = not isinstance(j.rating, int) or isinstance(j.rating, bool) or not 1 <= j.rating <= 5
        if j.kind == "rating" and bad:
            raise UserError(f"rating {j.rating!r}: a whole number from 1 to 5")
    else:
        if j.label is not None and j.label not in labels:
            raise UserError(f"label {j.label!r}: one of {', '.join(sorted(labels))}, or none")
        if not isinstance(j.text, str) or not j.text.strip() or len(j.text) > MAX_TEXT:
            raise UserError(f"text: the corrected answer (1-{MAX_TEXT:,} characters)")
    if j.comment is not None and (not isinstance(j.comment, str) or len(j.comment) > MAX_TEXT):
        raise UserError(f"comment: text of at most {MAX_TEXT:,} characters")
    if not isinstance(j.tags, list) or any(not isinstance(t, str) or len(t) > 40 for t in j.tags):
        raise UserError("tags: a list of short words (at most 40 characters each)")


def record(reg: Registry, j: Judgement) -> int:
    """Store one judgement at once (its own transaction); returns its id."""
    check_types(j)
    it = item(reg, j.item)
    check(j, it, queue(reg, it["queue"]))
    with reg.tx() as db:
        cur = db.execute(
            "INSERT INTO judgements (item, reviewer, kind, left, right, choice, label, rating, tags, "
            "comment, correction, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (j.item, j.reviewer.strip(), j.kind, j.left, j.right, j.choice, j.label, j.rating,
             json.dumps(j.tags), j.comment, j.text, time.time()),
        )  # fmt: skip
        return int(cur.lastrowid)


def purge(reg: Registry, before: float) -> tuple[int, int]:
    """Delete what `serve --capture` kept before `before`, with the review items made of it (and their
    judgements); returns (captures, items) deleted."""
    with reg.tx() as db:
        gone = "SELECT id FROM captures WHERE at < ?"
        items_gone = db.execute(f"DELETE FROM review_items WHERE capture IN ({gone})", (before,)).rowcount
        n = db.execute("DELETE FROM captures WHERE at < ?", (before,)).rowcount
    return n, items_gone


def remove_queue(reg: Registry, name: str) -> int:
    """Delete a queue with its items and judgements; returns how many judgements went with it."""
    queue(reg, name)
    n = len(judgements(reg, name))
    with reg.tx() as db:
        db.execute("DELETE FROM review_queues WHERE name = ?", (name,))
    return n


def source_files(reg: Registry, name: str) -> list[Path]:
    return sorted({Path(i["path"]) for i in items(reg, name) if i.get("path")})
