"""`tunesmith docs index FOLDER --out INDEX` and `docs search`: the documents cut into passages, indexed
for retrieval, and kept up to date.

A passage is PASSAGE_WORDS words of one document, overlapping the next by OVERLAP (an answer that
straddles a cut is still whole in one of them), and it knows where it came from: the file, the page or
byte range of the part it was cut from, and its words' positions there, so an answer can cite it.

The index is a folder: `tunesmith-index.json` (each file's size, modification time and sha256, and
how it was read) and `passages.jsonl`. A rebuild re-reads only the files whose size or time changed
and whose bytes then differ, takes the others' passages from the old index, and drops the files that
are gone. It is written beside the final name and swapped in when whole (files/atomic.py), so an
interrupted build leaves the old index as it was, never half of one.

Retrieval is BM25 (k1 1.5, b 0.75; `eval --systems rag:K` uses the same), scored through an inverted
index, so a query costs the passages that hold its words, not every passage of the corpus. With
`--embed [ENCODER]` each passage also gets a vector (embed.py, `embeddings.safetensors`; a rebuild
embeds only the new passages), and the index answers by `embed` (cosine) or `hybrid`, BM25's and the
vectors' rankings fused by reciprocal rank, its default then.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from tunesmith.corpus.check import walk
from tunesmith.corpus.embed import rrf
from tunesmith.corpus.read import Skipped, parts
from tunesmith.errors import UserError
from tunesmith.files.atomic import make_temp_dir, replace_dir, sweep
from tunesmith.files.outputs import INDEX_INFO, check_inputs, check_replaceable, holds
from tunesmith.models.encoder import Encoder

MANIFEST = INDEX_INFO
PASSAGES = "passages.jsonl"
EMBEDDINGS = "embeddings.safetensors"
RETRIEVERS = ("bm25", "embed", "hybrid")
FUSE_DEPTH = 50  # hybrid: each retriever's top passages that are fused
PASSAGE_WORDS = 200
OVERLAP = 40
VERSION = 1
WORD = re.compile(r"\S+")
TERM = re.compile(r"\w+")


def fingerprint(p: Path) -> dict:
    st = p.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def cut(rel: str, p: Path, notes: list[str]) -> list[dict]:
    """The passages of one document, in order."""
    out = []
    for part in parts(p, notes):
        words = WORD.findall(part.text)
        step = PASSAGE_WORDS - OVERLAP
        for s in range(0, max(len(words) - OVERLAP, 1), step):
            chunk = words[s : s + PASSAGE_WORDS]
            if chunk:
                where = f"{part.where}, " if part.where else ""
                out.append({"file": rel, "where": f"{where}words {s + 1}-{s + len(chunk)}",
                            "text": " ".join(chunk)})  # fmt: skip
    return out


def read_index(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(manifest, passages by file) of an index; empty for a folder that is not one yet."""
    if not (out / MANIFEST).is_file():
        return {"files": {}}, {}
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        by_file: dict[str, list[dict]] = defaultdict(list)
        with open(out / PASSAGES, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                by_file[row["file"]].append(row)
        assert manifest.get("version") == VERSION
    except (OSError, ValueError, KeyError, AssertionError):
        raise UserError(f"{out}: a damaged document index; delete it and build it again") from None
    return manifest, by_file


def embed_rows(rows: list[dict], dest: Path, old: dict, old_passages: dict, spec: str, say=None) -> tuple:
    """The vectors of `rows`, those of passages the old index (its manifest and passages, as build read
    them) embedded with the same encoder reused; -> (vectors, how many were embedded now)."""
    import numpy as np
    from safetensors.numpy import load_file

    known: dict[tuple, np.ndarray] = {}
    if old.get("embed", {}).get("encoder") == spec and (dest / EMBEDDINGS).is_file():
        vecs = load_file(str(dest / EMBEDDINGS))["vectors"]
        flat = [r for rs in old_passages.values() for r in rs]
        known = {(r["file"], r["where"], r["text"]): vecs[i] for i, r in enumerate(flat) if i < len(vecs)}
    keys = [(r["file"], r["where"], r["text"]) for r in rows]
    todo = [i for i, key in enumerate(keys) if key not in known]
    enc = Encoder(spec)
    fresh = enc.encode([rows[i]["text"] for i in todo], say) if todo else np.zeros((0, enc.dim), np.float32)
    out = np.zeros((len(rows), enc.dim), dtype=np.float32)
    out[todo] = fresh
    for i, key in enumerate(keys):
        if key in known:
            out[i] = known[key]
    return out, len(todo)


def build(folder: str, out: str, say=None, embed: str | None = None) -> dict:
    """Build or update the index of `folder` at `out` (with vectors from the `embed` encoder); returns
    what was done."""
    src, dest = Path(folder), Path(out)
    if not src.is_dir():
        raise UserError(f"{folder}: not a folder")
    check_inputs(dest, {"FOLDER": src}, flag="--out")
    if dest.exists() and any(dest.iterdir()) and not holds(dest, "index"):
        check_replaceable(dest, "index")  # says whose files are there
    sweep(dest.resolve().parent, dest.name)  # what a build killed while writing left beside it
    old, old_passages = read_index(dest)
    files, rows, counts = {}, [], Counter()
    for rel, p, why in walk(src):
        if p is None:
            files[rel] = {"skipped": why}
            counts["skipped"] += 1
            continue
        fp, before = fingerprint(p), old["files"].get(rel, {})
        same = before and before.get("size") == fp["size"] and not before.get("skipped")
        if same and before.get("mtime_ns") != fp["mtime_ns"]:
            fp["sha256"] = sha256(p)
            same = fp["sha256"] == before.get("sha256")
        if same:
            files[rel] = {**before, "mtime_ns": fp["mtime_ns"]}
            rows += old_passages.get(rel, [])
            counts["reused"] += 1
            continue
        notes: list[str] = []
        try:
            passages = cut(rel, p, notes)
            if not passages:
                raise Skipped("empty (no text in it)")
        except Skipped as e:
            files[rel] = {**fp, "skipped": str(e)}
            counts["skipped"] += 1
            if say:
                say(f"skip  {rel}: {e}")
            continue
        files[rel] = {
            **fp,
            "sha256": fp.get("sha256") or sha256(p),
            "passages": len(passages),
            "notes": notes,
        }
        rows += passages
        counts["read"] += 1
        if say:
            say(f"read  {rel}: {len(passages)} passages")
    if not rows:
        raise UserError(f"{folder}: no readable document in it; nothing to index")
    counts["removed"] = len(set(old["files"]) - set(files))
    manifest = {"version": VERSION, "folder": str(src.resolve()), "passage_words": PASSAGE_WORDS,
                "overlap": OVERLAP, "retriever": "hybrid" if embed else "bm25", "files": files,
                "passages": len(rows)}  # fmt: skip
    vectors = None
    if embed:
        vectors, counts["embedded"] = embed_rows(rows, dest, old, old_passages, embed, say)
        manifest["embed"] = {"encoder": embed, "dim": int(vectors.shape[1])}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(dest)
    with open(tmp / PASSAGES, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if vectors is not None:
        from safetensors.numpy import save_file

        save_file({"vectors": vectors}, str(tmp / EMBEDDINGS))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    check_replaceable(dest, "index", keep=tmp)
    replace_dir(tmp, dest)
    keys = ("read", "reused", "skipped", "removed", *(("embedded",) if embed else ()))
    return {"passages": len(rows), **{k: counts[k] for k in keys}}


class Index:
    """A built index, loaded for search."""

    def __init__(self, out: str, k1: float = 1.5, b: float = 0.75):
        manifest, by_file = read_index(Path(out))
        if not manifest["files"]:
            raise UserError(
                f"{out}: not a document index; build one with `tunesmith docs index FOLDER --out {out}`"
            )
        self.passages = [row for rows in by_file.values() for row in rows]
        self.retriever, self.embed = manifest.get("retriever", "bm25"), manifest.get("embed")
        self.vectors, self.encoder, self.folder = None, None, Path(out)
        self.k1, self.b = k1, b
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.length = []
        for i, row in enumerate(self.passages):
            tf = Counter(t for t in TERM.findall(row["text"].lower()) if len(t) > 1)
            self.length.append(sum(tf.values()))
            for t, n in tf.items():
                self.postings[t].append((i, n))
        self.avg = sum(self.length) / max(len(self.length), 1)
        n = len(self.passages)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}

    def search(self, query: str, k: int = 5, retriever: str | None = None) -> list[tuple[float, dict]]:
        """The k best passages for `query` by the index's retriever (or `retriever`), best first."""
        how = retriever or self.retriever
        if how not in RETRIEVERS:
            raise UserError(f"--retriever {how}: choose from {', '.join(RETRIEVERS)}")
        if how == "bm25":
            return [(s, self.passages[i]) for s, i in self.bm25(query, k)]
        if not self.embed:
            raise UserError(
                f"--retriever {how}: {self.folder} has no vectors; build it with `docs index --embed`"
            )
        dense = self.dense(query, k if how == "embed" else FUSE_DEPTH)
        if how == "embed":
            return [(s, self.passages[i]) for s, i in dense]
        fused = rrf([[i for _, i in self.bm25(query, FUSE_DEPTH)], [i for _, i in dense]])
        return [(round(s, 5), self.passages[i]) for s, i in fused[:k]]

    def dense(self, query: str, k: int) -> list[tuple[float, int]]:
        """The k passages whose vectors are nearest the query's (cosine), best first."""
        import numpy as np
        from safetensors.numpy import load_file

        if self.vectors is None:
            self.vectors = load_file(str(self.folder / EMBEDDINGS))["vectors"]
            if len(self.vectors) != len(self.passages):
                raise UserError(f"{self.folder}: a damaged document index; delete it and build it again")
            self.encoder = Encoder(self.embed["encoder"])
        sims = self.vectors @ self.encoder.encode([query])[0]
        top = np.argsort(-sims, kind="stable")[:k]
        return [(round(float(sims[i]), 4), int(i)) for i in top]

    def bm25(self, query: str, k: int) -> list[tuple[float, int]]:
        """The k passages with the highest BM25 score (ties: the earlier passage), those sharing no word
        with the query left out."""
        scores: dict[int, float] = defaultdict(float)
        for t in {t for t in TERM.findall(query.lower()) if len(t) > 1}:
            for i, f in self.postings.get(t, ()):
                norm = self.k1 * (1 - self.b + self.b * self.length[i] / self.avg)
                scores[i] += self.idf[t] * f * (self.k1 + 1) / (f + norm)
        best = heapq.nsmallest(k, scores.items(), key=lambda x: (-x[1], x[0]))
        return [(round(s, 4), i) for i, s in best]
