"""`train --documents FOLDER`: continued pre-training on a folder of documents (issue 39, part 2).

Every readable document (corpus/read.py: txt, md, html, pdf, docx) is tokenized in order, its parts
joined, the end-of-text token after its last word, and cut into rows of --max-length tokens. Every
token is a target, as in pre-training: the model learns the documents' words, not answers to prompts.

A row never spans two documents. Packing the end of one contract against the start of the next would
teach a join that is not there unless the attention is masked per document (a block-diagonal mask the
eager and SDPA paths of small models do not all take); instead a document's last, shorter row stands
alone and the length-grouped batching (batching.py) puts rows of like length together, so little
padding is paid for it.

The held-out documents are chosen as `docs check` chooses them (corpus/check.py: by document, with
duplicates and near duplicates on one side, seeded), and their rows are the validation set: the
validation loss is the held-out per-token loss, and `docs perplexity` reports it per document with
intervals. The run records which documents were held out and the documents' hash (lineage).

`--general PATH` (a folder or file of any text, read the same way) mixes general text in, `--general-ratio`
tokens of it per document token, drawn at random with the seed: the usual way to limit what continued
pre-training makes a small model forget (measured with `docs perplexity --general`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from tunesmith.corpus.check import check_folder, walk
from tunesmith.corpus.read import Skipped, parts
from tunesmith.errors import UserError
from tunesmith.models.chat import Encoded
from tunesmith.models.weightfiles import sha256_file

MIN_ROW = 2  # tokens: one target needs one token before it


@dataclass
class DocRows:
    """A folder's documents as training rows, and what the run records of them."""

    train: list[Encoded]
    val: list[Encoded]
    held_out: list[str]  # relative paths
    trained: list[str]
    skipped: list[str]  # "path: why"
    tokens: int
    sha256: str  # of the documents' paths and bytes hashes, in order: the corpus as the registry knows it


def doc_tokens(tok, p: Path) -> list[int]:
    """One document's tokens, the end-of-text token last; raises Skipped."""
    ids: list[int] = []
    notes: list[str] = []
    carry = ""  # a word cut at a block's end waits for the next block, so no word is tokenized in two halves
    for part in parts(p, notes):
        text = carry + part.text
        cut = max(text.rfind(" "), text.rfind("\n"))
        if cut < 0:
            carry = text
            continue
        carry = text[cut:]
        ids += tok(text[:cut], add_special_tokens=False)["input_ids"]
    if carry.strip():
        ids += tok(carry, add_special_tokens=False)["input_ids"]
    if not ids:
        raise Skipped("empty (no text in it)")
    if tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
    return ids


def rows_of(ids: list[int], length: int) -> list[Encoded]:
    out = []
    for s in range(0, len(ids), length):
        chunk = ids[s : s + length]
        if len(chunk) >= MIN_ROW:
            out.append(Encoded(chunk, list(chunk)))
    return out


def corpus_hash(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every regular file, in walk order."""
    h = hashlib.sha256()
    for rel, p, _ in walk(folder):
        if p is None:
            continue
        try:
            h.update(f"{rel}\0{sha256_file(p)}\n".encode())
        except OSError:
            continue  # gone or unreadable: the reading says so
    return h.hexdigest()


def document_rows(
    folder: str, tok, length: int, held_out: float, seed: int, flag: str = "--documents"
) -> DocRows:
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{flag} {folder}: not a folder (a folder of txt, md, html, pdf or docx files)")
    report = check_folder(folder, None, held_out, seed) if held_out > 0 else None
    held = set(report["held_out"]) if report else set()
    train, val, skipped, trained, tokens = [], [], [], [], 0
    for rel, p, why in walk(root):
        if p is None:
            skipped.append(f"{rel}: {why}")
            continue
        try:
            ids = doc_tokens(tok, p)
        except Skipped as e:
            skipped.append(f"{rel}: {e}")
            continue
        tokens += len(ids)
        (val if rel in held else train).extend(rows_of(ids, length))
        if rel not in held:
            trained.append(rel)
    if not train:
        raise UserError(
            f"{flag} {folder}: no readable document left to train on "
            + (f"({len(held)} held out; lower --held-out)" if held else "(`tunesmith docs check` says why)")
        )
    return DocRows(train, val, sorted(held), trained, skipped, tokens, corpus_hash(root))


def general_rows(path: str, tok, length: int, want_tokens: int, seed: int) -> list[Encoded]:
    """Rows of general text, about `want_tokens` of them, drawn at random (repeated when there are fewer)."""
    p = Path(path)
    if p.is_dir():
        rows = document_rows(path, tok, length, 0, seed, flag="--general").train
    elif p.is_file():
        try:
            rows = rows_of(doc_tokens(tok, p), length)
        except Skipped as e:
            raise UserError(f"--general {path}: {e}") from None
    else:
        raise UserError(f"--general {path}: no such file or folder")
    if not rows:
        raise UserError(f"--general {path}: no text in it")
    rng, out, n = random.Random(seed), [], 0
    pool: list[Encoded] = []
    while n < want_tokens:
        if not pool:
            pool = rows[:]
            rng.shuffle(pool)
        out.append(pool.pop())
        n += len(out[-1].input_ids)
    return out
