"""What an `--out` may be: the one rule that keeps tunesmith from deleting a person's files.

Rule: we never delete or replace anything we did not create. An `--out` is either a path that
does not exist yet (or an empty folder), or one that holds a tunesmith artefact of the same kind
(a run, a prepared data set, a merged model, a GGUF we exported), and then only with
`--overwrite`. It may not be, lie inside, or contain any of the command's inputs (data, adapter,
model): replacing it would replace them. Each kind is recognised by a file only tunesmith
writes (`MARKERS`); a GGUF by a metadata key we add to every file we export.

Why this module exists: the reliability attack showed `train --out x/precious` deleting
`thesis.docx`, `train --data D --out D` deleting `D/train.jsonl`, `data prepare SRC/x.jsonl --out
SRC --overwrite` deleting a source, and `merge --out <adapter dir> --overwrite` deleting the
adapter. Each command had its own partial check; they now all ask this one.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.files.atomic import sweep

RUN_INFO = "tunesmith-run.json"  # written by `train` into every finished run directory
INPUTS = "inputs.json"  # what a run started from (config, data checksums, its id), beside RUN_INFO
MERGE_INFO = "tunesmith-merge.json"  # written by `merge`
DATA_CARD = "card.json"  # written by `data prepare`
GGUF_MARK = "tunesmith.exported_by"  # a GGUF metadata key written by `export`

INDEX_INFO = "tunesmith-index.json"  # written by `docs index`
MARKERS = {"run": RUN_INFO, "data": DATA_CARD, "merge": MERGE_INFO, "index": INDEX_INFO}
WHAT = {
    "run": "a run",
    "data": "a prepared data set",
    "merge": "a merged model",
    "index": "a document index",
    "gguf": "a GGUF file tunesmith exported",
}


def holds(path: Path, kind: str) -> bool:
    """Does `path` hold a tunesmith artefact of this kind?"""
    if kind == "gguf":
        return path.is_file() and _gguf_is_ours(path)
    return path.is_dir() and (path / MARKERS[kind]).is_file()


def _gguf_is_ours(path: Path) -> bool:
    try:
        import gguf

        return GGUF_MARK in gguf.GGUFReader(str(path)).fields
    except Exception:  # not a GGUF, or a damaged one: not ours to replace
        return False


def check_out(
    out: str | Path,
    kind: str,
    *,
    overwrite: bool,
    inputs: dict[str, object] | None = None,
    flag: str = "--out",
    clean: bool = True,
) -> Path:
    """Refuse an --out that would delete or replace something that is not ours; returns the path.
    With `clean`, first clears our own leftovers of killed earlier runs beside it (never anything else)."""
    path = Path(out).expanduser()
    parent = path.resolve().parent
    if clean:
        sweep(parent, path.name)
    check_inputs(path, inputs or {}, flag)
    if kind == "gguf":
        if path.is_dir():
            raise UserError(f"{flag} {out}: is a directory; give the .gguf file to write")
    elif path.exists() and not path.is_dir():
        raise UserError(f"{flag} {out}: exists and is a file; give a folder to create")
    if path.exists() and (kind == "gguf" or any(path.iterdir())):
        if not holds(path, kind):
            raise UserError(
                f"{flag} {out}: {_not_ours(path, kind)}; choose a new {flag} "
                "(tunesmith never replaces what it did not write)"
            )
        if not overwrite:
            raise UserError(
                f"{flag} {out}: already holds {WHAT[kind]}; choose a new {flag}, or pass --overwrite "
                "(the old one is replaced only once the new one is complete)"
            )
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{flag} {out}: cannot create {parent} ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {out}: cannot write in {parent}")
    return path


def check_replaceable(path: Path, kind: str, keep: Path | None = None, flag: str = "--out") -> None:
    """Just before the swap: `path` must still be absent, empty, or ours (a resumed run, or a folder
    someone filled while we worked). `keep` says where the finished output waits meanwhile."""
    if (
        not path.exists()
        or (path.is_dir() and kind != "gguf" and not any(path.iterdir()))
        or holds(path, kind)
    ):
        return
    where = f"; the finished output is kept in {keep}" if keep else ""
    raise UserError(f"{flag} {path}: {_not_ours(path, kind)}, so it was not replaced{where}")


def _not_ours(path: Path, kind: str) -> str:
    if kind == "gguf":
        return "exists and is not a GGUF file tunesmith exported"
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"holds files tunesmith did not write ({shown})"


def input_paths(inputs: dict[str, object]) -> list[tuple[str, Path]]:
    """(flag, path) for every input that is a path on this machine (aliases and hub ids are not)."""
    found = []
    for flag, value in inputs.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v and Path(str(v)).expanduser().exists():
                found.append((flag, Path(str(v)).expanduser()))
    return found


def check_inputs(out: Path, inputs: dict[str, object], flag: str = "--out") -> None:
    """An --out may not be an input, lie inside one, or contain one."""
    ro = out.resolve()
    for name, p in input_paths(inputs):
        rp = p.resolve()
        if ro == rp:
            raise UserError(f"{flag} {out}: is the {name} {p} itself; write the result somewhere else")
        if rp in ro.parents:
            raise UserError(
                f"{flag} {out}: lies inside the {name} folder {p}; write the result somewhere else"
            )
        if ro in rp.parents:
            raise UserError(
                f"{flag} {out}: contains the {name} {p}, which replacing it would delete; "
                "write the result somewhere else"
            )
