"""Write outputs under a temporary name and rename them into place, so a crash never leaves a
half-written artefact where a good one was."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def make_temp_dir(final: Path) -> Path:
    """A temp dir beside `final` (same filesystem, so os.replace is atomic), with normal permissions."""
    tmp = Path(tempfile.mkdtemp(dir=final.resolve().parent, prefix=f".{final.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished directory into place; an existing one is removed only after that."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False))
