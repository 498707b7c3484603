"""Weight files on disk: their sha256, a safetensors header checked before anything loads it, and the
checksum manifest of a cached conversion (verified once, then trusted while each file is unchanged).
Below models/resolve.py, which decides where models come from; loading, the run record and the registry
use the same checks."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.files.atomic import write_json

MANIFEST = "tunesmith-model.json"
# size, inode, mtime and digest of each weight file when it last hashed right, and when that was
VERIFIED = ".tunesmith-verified.json"
UNSURE_NS = 2_000_000_000  # a file modified this close to its check is hashed again next time


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


SAFETENSORS_DTYPES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
MAX_HEADER = 100_000_000  # what the safetensors library itself accepts


def check_safetensors(f: Path) -> None:
    """The file's header is read (never its tensors) and checked against its size: a pickle renamed
    .safetensors, an empty or cut file, and a header that claims 2^63 bytes are all refused here."""
    size = f.stat().st_size
    bad = f"{f}: not a valid safetensors file"
    if size < 8:
        raise UserError(f"{bad} ({size} bytes; the file is empty or cut short)")
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > MAX_HEADER or 8 + n > size:
            raise UserError(
                f"{bad} (its header claims {n:,} bytes; the file has {size:,}): damaged, cut short, or "
                "another format (a pickle?)"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{bad} (its header is not JSON): damaged, or another format (a pickle?)") from None
    if not isinstance(header, dict):
        raise UserError(f"{bad} (its header is not a JSON object)")
    body = size - 8 - n
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            count = 1
            for d in t["shape"]:
                count *= int(d)
            begin, end = (int(x) for x in t["data_offsets"])
            ok = 0 <= begin <= end <= body and end - begin == count * SAFETENSORS_DTYPES[t["dtype"]]
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise UserError(
                f"{bad} (tensor {name!r} lies outside the file or does not match its shape): damaged or "
                "cut short"
            )


def verify_manifest(path: Path) -> None:
    """Cached conversions carry checksums of their weights; a mismatch means a damaged cache.

    Hashing the default model's 540 MB took 5.6 s of every command that loads it (cold page cache, the
    2-core EPYC), more than loading it. As git does with its index, a file whose size, inode and
    modification time are those recorded when it last hashed right is not hashed again -- provided it
    was last modified well before that check (a file written in the same instant could change unseen).
    Any write to a cached file changes its modification time, and then it is hashed again."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text())["files"]
        entries = [(name, int(size), str(digest)) for name, (size, digest) in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{manifest}: damaged; delete {path} and run again to re-create it") from None
    seen, fresh = _read_json_dict(path / VERIFIED), {}
    for name, size, digest in entries:
        f = path / name
        st = f.stat() if f.is_file() else None
        if st is not None and _known(st, seen.get(name)) == digest:
            continue
        if st is None or st.st_size != size or sha256_file(f) != digest:
            raise UserError(
                f"{f}: cached model file is missing or corrupted (checksum mismatch); "
                f"delete {path} and run again to re-create it"
            )
        fresh[name] = _entry(st, digest)
    if fresh:
        _remember(path / VERIFIED, {**seen, **fresh})


def _known(st, entry) -> str | None:
    """The digest remembered for a file, where git's rule lets it stand: the same size, inode and mtime as
    when it last hashed right, and that check made well after its last write."""
    if isinstance(entry, list) and len(entry) == 5 and entry[:3] == [st.st_size, st.st_ino, st.st_mtime_ns]:
        return entry[3] if st.st_mtime_ns < entry[4] - UNSURE_NS else None
    return None


def _entry(st, digest: str) -> list:
    return [st.st_size, st.st_ino, st.st_mtime_ns, digest, time.time_ns()]


def _remember(memo: Path, seen: dict) -> None:
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_json(memo, seen)
    except OSError:  # a read-only cache: hashed again next time
        pass


def _read_json_dict(f: Path) -> dict:
    try:
        seen = json.loads(f.read_text())
        return seen if isinstance(seen, dict) else {}
    except (OSError, ValueError):
        return {}


def write_manifest(path: Path, source: dict) -> None:
    files = {p.name: (p.stat().st_size, sha256_file(p)) for p in sorted(path.glob("*.safetensors"))}
    (path / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=2))


def file_digest(path: Path, memo: Path) -> str:
    """sha256 of `path`, remembered in `memo` (a JSON file) under verify_manifest's rule: a user's 2 GB .gguf
    named as --model was hashed by every command (its digest names its cached conversion)."""
    st, key = path.stat(), str(path.resolve())
    seen = _read_json_dict(memo)
    known = _known(st, seen.get(key))
    if known:
        return known
    digest = sha256_file(path)
    _remember(memo, {**seen, key: _entry(st, digest)})
    return digest
