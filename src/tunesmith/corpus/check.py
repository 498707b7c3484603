"""`tunesmith docs check FOLDER`: every file of a document folder, read or not and why, and what the
folder holds as a corpus: pages, characters and tokens per file, the exact and near duplicates, and
a held-out split made by document, never by chunk (a chunk of a training document in the test set
would measure memory, not learning).

Built to stream: one file is read at a time, in parts (corpus/read.py), and what is kept of a document
is its figures and a 128-number MinHash signature (1 KiB), so 10,000 files cost about 10 MiB of
signatures whatever their size. Near duplicates are found by LSH over the signatures and estimated by
their agreement (the exact Jaccard of data/dedupe.py would need every document's shingles in memory).
Symbolic links are never followed: one that points outside the folder is said to.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.corpus.lang import language, sample_add
from tunesmith.corpus.read import Skipped, kind_of, parts
from tunesmith.data.dedupe import WORD, MinHasher, shingles
from tunesmith.errors import UserError

NEAR = 0.8  # estimated Jaccard of word 5-gram sets from which two documents are near duplicates
TOKENIZE_CHARS = 1 << 20  # characters handed to the tokenizer at once
WINDOW = 20_000  # words shingled at once: 20k 5-grams x 128 hashes x 8 bytes = 20 MB at the most


@dataclass
class FileReport:
    path: str  # relative to the folder
    kind: str | None
    bytes: int = 0
    pages: int = 0
    chars: int = 0
    tokens: int = 0
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    sha256: str = ""  # of the text, whitespace collapsed: the same text in a .pdf and a .docx is one
    language: str | None = None  # corpus/lang.py: an ISO 639 code, "unsure", or None (no detector)


def walk(root: Path):
    """(relative path, path or None, why not) for everything below root, in a stable order; links never
    followed."""
    real = root.resolve()
    for here, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        base = Path(here)
        for name in sorted(files) + [d for d in dirs if (base / d).is_symlink()]:
            p = base / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                target = os.path.realpath(p)
                inside = Path(target).is_relative_to(real)
                outside = "" if inside else " (it points outside the folder)"
                yield rel, None, "a symbolic link, not followed" + outside
            else:
                yield rel, p, None
        dirs[:] = [d for d in dirs if not (base / d).is_symlink() and not d.startswith(".")]


def read_one(p: Path, rel: str, tokenizer, hasher: MinHasher) -> tuple[FileReport, np.ndarray | None]:
    """One file's report and its MinHash signature (None when skipped)."""
    rep = FileReport(rel, kind_of(p))
    try:
        rep.bytes = p.stat().st_size
        if rep.bytes == 0:
            raise Skipped("empty (0 bytes)")
        digest, sig, tail, blank, sample = hashlib.sha256(), None, "", True, []
        for part in parts(p, rep.notes):
            sample_add(sample, part.text)
            rep.pages += part.where.startswith("page ")
            blank = blank and not part.text.strip()
            text = tail + part.text
            rep.chars += len(part.text)
            words = " ".join(part.text.split())
            if words:  # the same words in pages or in one block: the same digest
                digest.update(words.encode() + b" ")
            if tokenizer is not None:
                for s in range(0, len(part.text), TOKENIZE_CHARS):
                    rep.tokens += len(tokenizer(part.text[s : s + TOKENIZE_CHARS])["input_ids"])
            cut = text.rfind(" ", 0, max(0, len(text) - 200))  # shingles across the part boundary stay whole
            body, tail = (text[:cut], text[cut:]) if cut > 0 else (text, "")
            sig = signature(hasher, body, sig)
        if tail:
            sig = signature(hasher, tail, sig)
        if blank:
            raise Skipped("empty (no text in it)")
        rep.sha256 = digest.hexdigest()
        rep.language = language(sample)
        return rep, sig
    except Skipped as e:
        rep.skipped, rep.pages, rep.chars, rep.tokens = str(e), 0, 0, 0
        return rep, None
    except FileNotFoundError:
        rep.skipped = "gone while it was read"
        return rep, None


def signature(hasher: MinHasher, text: str, sig: np.ndarray | None) -> np.ndarray:
    """The MinHash signature of `text`'s word 5-grams, folded into `sig` (a union's signature is the
    elementwise minimum), WINDOW words at a time so a long part never holds all its shingles at once."""
    words = WORD.findall(text.lower())
    for start in range(0, max(len(words), 1), WINDOW):
        one = hasher.signature(shingles(" ".join(words[start : start + WINDOW + 4])))
        sig = one if sig is None else np.minimum(sig, one)
    return sig


def near_pairs(sigs: dict[int, np.ndarray], hasher: MinHasher, threshold: float = NEAR) -> list[tuple]:
    """(i, j, estimated Jaccard) for the documents whose signatures agree on at least `threshold`."""
    buckets: dict[bytes, list[int]] = defaultdict(list)
    for i, sig in sigs.items():
        for key in hasher.band_keys(sig):
            buckets[key].append(i)
    seen, out = set(), []
    for ids in buckets.values():
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                pair = (ids[a], ids[b])
                if pair in seen:
                    continue
                seen.add(pair)
                est = float((sigs[pair[0]] == sigs[pair[1]]).mean())
                if est >= threshold:
                    out.append((*pair, round(est, 3)))
    return sorted(out)


def groups(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Each document's group (union-find over duplicate pairs): copies go to the same side of a split."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    return [find(i) for i in range(n)]


def split(reports: list[FileReport], group: list[int], fraction: float, seed: int) -> list[str]:
    """The held-out documents: whole duplicate groups, seeded, about `fraction` of the documents."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group):
        members[g].append(i)
    order = sorted(members, key=lambda g: reports[members[g][0]].path)
    random.Random(seed).shuffle(order)
    want, held = max(1, round(fraction * len(reports))) if len(reports) > 1 else 0, []
    for g in order:
        if len(held) >= want:
            break
        held += [reports[i].path for i in members[g]]
    return sorted(held)


def check_folder(root: str, tokenizer=None, held_out: float = 0.1, seed: int = 42, say=None) -> dict:
    folder = Path(root)
    if not folder.is_dir():
        raise UserError(f"{root}: not a folder")
    hasher = MinHasher()
    reports, sigs, t0, total = [], {}, time.perf_counter(), 0
    for rel, p, why in walk(folder):
        if p is None:
            reports.append(FileReport(rel, None, skipped=why))
            if say:
                say(reports[-1])
            continue
        rep, sig = read_one(p, rel, tokenizer, hasher)
        total += rep.bytes
        if sig is not None:
            sigs[len(reports)] = sig
        reports.append(rep)
        if say:
            say(rep)
    read = [i for i, r in enumerate(reports) if r.skipped is None]
    if not read:
        raise UserError(f"{root}: no readable document in it ({len(reports)} files, every one skipped)")
    by_text: dict[str, list[int]] = defaultdict(list)
    for i in read:
        by_text[reports[i].sha256].append(i)
    exact = [(g[0], j) for g in by_text.values() for j in g[1:]]
    near = [x for x in near_pairs(sigs, hasher) if reports[x[0]].sha256 != reports[x[1]].sha256]
    docs = [reports[i] for i in read]
    index = {i: k for k, i in enumerate(read)}
    group = groups(len(docs), [(index[a], index[b]) for a, b, *_ in exact + near])
    seconds = time.perf_counter() - t0
    return {
        "folder": str(folder),
        "files": [asdict(r) for r in reports],
        "read": len(read),
        "skipped": len(reports) - len(read),
        "pages": sum(r.pages for r in docs),
        "chars": sum(r.chars for r in docs),
        "tokens": sum(r.tokens for r in docs),
        "languages": dict(Counter(r.language for r in docs if r.language).most_common()),
        "exact_duplicates": [[reports[a].path, reports[b].path] for a, b in exact],
        "near_duplicates": [[reports[a].path, reports[b].path, est] for a, b, est in near],
        "held_out": split(docs, group, held_out, seed),
        "split": {"fraction": held_out, "seed": seed, "by": "document (duplicates kept together)"},
        "seconds": round(seconds, 2),
        "files_per_s": round(len(reports) / max(seconds, 1e-9), 1),
        "mb_per_s": round(total / 1e6 / max(seconds, 1e-9), 2),
    }
