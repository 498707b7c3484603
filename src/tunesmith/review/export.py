"""From judgements to training data: corrected answers as chat examples (`--sft`), A/B choices as
preference pairs (`--dpo`), files that `tunesmith data check` passes and `tunesmith train` takes.

Two rules keep the next version honest. Nothing of a test set goes into training data: an item whose
prompt is in a held-out file (`--holdout`, the `test.jsonl` beside `--train DIR`, and the test file of
every registered eval that ran with `--gate`, since those are the frozen sets versions are compared
on) is held back and counted. And nothing is written twice: an example already in the training set
(`--train`), or twice in the export, is left out and counted.

What counts as a choice: per item, the majority of the reviewers' A/B votes, ties left out; an even
split between A and B is no choice. A correction is a preference too (the corrected answer over the
output it corrected), so `--dpo` includes those pairs. What `--sft` writes for an item is decided by
its newest verdict: a correction (its text is the answer), an acceptance (the output accepted as it
is: a teacher's draft, a good answer) or a rejection (nothing, counted).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import data_files, load_examples, messages_digest
from tunesmith.errors import UserError
from tunesmith.files.atomic import write_text
from tunesmith.models.chat import last_assistant
from tunesmith.registry.db import Registry
from tunesmith.review.store import VERDICTS, items, judgements, queue, queues


@dataclass
class Export:
    """What one export wrote and left out, for the summary line."""

    kind: str
    path: Path
    written: int = 0
    held_back: int = 0
    duplicates: int = 0
    skipped: Counter = field(default_factory=Counter)

    def line(self) -> str:
        left = [f"{self.held_back} held back (in a test set)", f"{self.duplicates} already in the data"]
        left += [f"{n} {why}" for why, n in self.skipped.items()]
        did = f"wrote {self.written} to {self.path}" if self.written else f"nothing to write to {self.path}"
        return f"{self.kind}: {did}; left out: {', '.join(left)}"


def holdout_prompts(reg: Registry, holdout: list[str], train: str | None) -> tuple[set[str], list[Path]]:
    """Prompt digests of every held-out file."""
    files = [Path(h) for h in holdout]
    if train and Path(train).is_dir() and (Path(train) / "test.jsonl").is_file():
        files.append(Path(train) / "test.jsonl")
    for r in reg.runs(kind="eval", limit=None):
        ev = reg.get(r["id"])
        if "gate" in (ev["result"] or {}):
            files += [Path(d["path"]) for d in ev["data"] if d["role"] == "test"]
    digests: set[str] = set()
    seen = []
    for f in dict.fromkeys(p.resolve() for p in files):
        if not f.is_file():
            if str(f) in map(str, (Path(h).resolve() for h in holdout)):
                raise UserError(f"--holdout {f}: no such file")
            continue  # a registered test file that has moved: nothing of it can be matched anyway
        seen.append(f)
        for ex in load_examples(f, "--holdout", kind=None):
            digests.add(str(messages_digest(ex.messages[: last_assistant(ex.messages)])))
    return digests, seen


def existing(train: str | None) -> set[str]:
    """Digests of every example of the training data (chat and pairs alike)."""
    if not train:
        return set()
    p = Path(train)
    if not p.exists():
        raise UserError(f"--train {train}: no such file or folder")
    files = [f for f in data_files(p) if f.name != "test.jsonl"] if p.is_dir() else [p]
    out = set()
    for f in files:
        for ex in load_examples(f, "--train", kind=None):
            out.add(str(messages_digest(ex.messages, ex.rejected)))
    return out


def _queues(reg: Registry, names: list[str] | None) -> list[str]:
    names = names or [q["name"] for q in queues(reg)]
    if not names:
        raise UserError("review export: no review queues yet; make one with `tunesmith review add EVAL`")
    for n in names:
        queue(reg, n)
    return names


def newest_corrections(reg: Registry, name: str, of_an_output: bool = False) -> dict[int, dict]:
    """Each corrected item's newest correction (judgements come oldest first: the newest wins); with
    of_an_output, only corrections of a model output (not answers written from scratch)."""
    return {j["item"]: j for j in judgements(reg, name, "correction") if j["label"] or not of_an_output}


def verdicts(reg: Registry, name: str) -> dict[int, dict]:
    """Each item's newest correction, acceptance or rejection (judgements come oldest first)."""
    return {j["item"]: j for j in judgements(reg, name) if j["kind"] in VERDICTS}


def sft_examples(reg: Registry, names: list[str], skipped: Counter) -> list[tuple[dict, list[dict]]]:
    """(item, messages) for every item whose newest verdict is a correction (its text is the answer) or an
    acceptance (the accepted output is); a rejection leaves the item out, counted."""
    out = []
    for name in names:
        by_item = {i["id"]: i for i in items(reg, name)}
        for item_id, j in verdicts(reg, name).items():
            it = by_item[item_id]
            if j["kind"] == "reject":
                skipped["rejected"] += 1
                continue
            answer = j["correction"] if j["kind"] == "correction" else it["outputs"][j["label"]]["output"]
            out.append((it, [*it["prompt"], {"role": "assistant", "content": answer}]))
    return out


def choices(reg: Registry, name: str, by_item: dict[int, dict]) -> tuple[list[tuple[dict, str, str]], int]:
    """(item, chosen label, rejected label) by the majority of A/B votes; and how many items split evenly."""
    q = queue(reg, name)
    votes: dict[int, Counter] = {}
    for j in judgements(reg, name, "ab"):
        votes.setdefault(j["item"], Counter())[j["choice"]] += 1
    out, split = [], 0
    for item_id, v in votes.items():
        a, b = v[q["a"]], v[q["b"]]
        if a == b:
            split += a > 0
            continue
        win, lose = (q["a"], q["b"]) if a > b else (q["b"], q["a"])
        out.append((by_item[item_id], win, lose))
    return out, split


def dpo_pairs(reg: Registry, names: list[str]) -> tuple[list[tuple[dict, str, str]], Counter]:
    """(item, chosen text, rejected text): A/B choices, then corrections over what they corrected."""
    pairs, skipped = [], Counter()
    for name in names:
        by_item = {i["id"]: i for i in items(reg, name)}
        picked, split = choices(reg, name, by_item)
        if split:
            skipped["split votes"] += split
        for it, win, lose in picked:
            pairs.append((it, it["outputs"][win]["output"], it["outputs"][lose]["output"]))
        for item_id, j in newest_corrections(reg, name, of_an_output=True).items():
            it = by_item[item_id]
            pairs.append((it, j["correction"], it["outputs"][j["label"]]["output"]))
    return pairs, skipped


def write_sft(reg: Registry, out: Path, names: list[str], held: set[str], known: set[str]) -> Export:
    e = Export("sft", out)
    rows = []
    for it, messages in sft_examples(reg, names, e.skipped):
        if it["digest"] in held:
            e.held_back += 1
        elif (d := str(messages_digest(messages))) in known:
            e.duplicates += 1
        else:
            known.add(d)
            rows.append({"messages": messages})
    return _write(e, rows)


def write_dpo(reg: Registry, out: Path, names: list[str], held: set[str], known: set[str]) -> Export:
    pairs, skipped = dpo_pairs(reg, names)
    e = Export("dpo", out, skipped=skipped)
    rows = []
    for it, chosen, rejected in pairs:
        prompt = it["prompt"]
        if it["digest"] in held:
            e.held_back += 1
        elif not chosen.strip() or not rejected.strip():
            e.skipped["an empty answer"] += 1
        elif chosen.strip() == rejected.strip():
            e.skipped["chosen same as rejected"] += 1
        elif len(prompt) != 1 or prompt[0]["role"] != "user":
            e.skipped["prompts of several messages (a pair holds one user turn)"] += 1
        elif (
            d := str(messages_digest([*prompt, {"role": "assistant", "content": chosen}], rejected))
        ) in known:
            e.duplicates += 1
        else:
            known.add(d)
            rows.append({"prompt": prompt[0]["content"], "chosen": chosen, "rejected": rejected})
    return _write(e, rows)


def _write(e: Export, rows: list[dict]) -> Export:
    """The file, atomically; none at all when there is nothing to write (an empty file is no data set)."""
    if rows:
        write_text(e.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    e.written = len(rows)
    return e


def export(
    reg: Registry,
    sft: str | None,
    dpo: str | None,
    names: list[str] | None = None,
    train: str | None = None,
    holdout: list[str] | None = None,
) -> tuple[list[Export], list[Path]]:
    """Write the files asked for; returns what each wrote and the held-out files that were checked."""
    if not sft and not dpo:
        raise UserError("review export: say what to write: --sft FILE and/or --dpo FILE")
    inputs = [Path(p).resolve() for p in [*(holdout or []), *([train] if train else [])]]
    for flag, path in (("--sft", sft), ("--dpo", dpo)):
        if path and Path(path).is_dir():
            raise UserError(f"{flag} {path}: is a folder; give a .jsonl file to write")
        if path and any(Path(path).resolve() == p or p in Path(path).resolve().parents for p in inputs):
            raise UserError(
                f"{flag} {path}: is one of the inputs; write to a new file (inputs are never changed)"
            )
    if sft and dpo and Path(sft).resolve() == Path(dpo).resolve():
        raise UserError(f"--sft and --dpo: both {sft}; chat examples and pairs go in files of their own")
    names = _queues(reg, names)
    held, files = holdout_prompts(reg, holdout or [], train)
    known = existing(train)
    done = []
    if sft:
        done.append(write_sft(reg, Path(sft), names, held, set(known)))
    if dpo:
        done.append(write_dpo(reg, Path(dpo), names, held, set(known)))
    if not any(e.written for e in done):
        said = "; ".join(e.line().split(": ", 1)[1] for e in done)
        raise UserError(f"review export: nothing to write ({said}); judge or correct some answers first")
    return done, files
