"""Write outputs under a temporary name and swap them into place, so a crash never leaves a
half-written artefact where a good one was, and never leaves the user without the old one.

Why a swap and not two renames: "move the old aside, move the new in" has an instant where the
output is missing; a kill there (measured: SIGKILL between the renames) left only
`.NAME.old-PID`. On Linux the two directories are exchanged in one `renameat2(RENAME_EXCHANGE)`
call: at every instant the name holds either the whole old output or the whole new one. Where
that call is missing (another OS, a file system without it) we fall back to the two renames, and
`sweep()` puts the old output back on the next start.

Every temporary name we create says whose it is: `.NAME.tmp-PID-RANDOM` (a temp) and
`.NAME.old-PID` (the old output during the fallback). `sweep()` removes those of dead
processes, and only those: a name that does not match, or whose process still runs, is left.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from tunesmith.files.faults import killpoint

# `.NAME.tmp-PID-…` / `.NAME.old-PID`; NAME is what the temp stands in for
_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-.*)?$")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def temp_prefix(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}-"


def make_temp_dir(final: Path) -> Path:
    """A temp dir beside `final` (same filesystem, so a rename is atomic), with normal permissions."""
    tmp = Path(tempfile.mkdtemp(dir=final.resolve().parent, prefix=temp_prefix(final.name)))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def make_temp_file(final: Path) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(dir=final.resolve().parent, prefix=temp_prefix(final.name))
    os.chmod(name, 0o666 & ~_umask())
    return fd, Path(name)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one system call; False where the OS or file system cannot."""
    if os.environ.get("TUNESMITH_TEST_NO_RENAME_EXCHANGE"):  # tests drive the fallback path with this
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished directory `tmp` at `final`; an existing `final` is removed only after that."""
    if not final.exists():
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):
        killpoint("swap.exchanged")
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old output
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    killpoint("swap.between")
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        killpoint("write.before_rename")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False))


# ---------------------------------------------------------------- leftovers of killed processes


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep(folder: Path, name: str | None = None) -> list[Path]:
    """Remove our temporaries in `folder` (for output `name`, or all) left by processes that are gone;
    first put back an old output that a killed swap had moved aside. Returns what was removed."""
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        m = _OURS.match(p.name)
        if not m or (name is not None and m["name"] != name) or alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not (folder / m["name"]).exists():
            # the swap died between its renames: the old output is the output
            os.replace(p, folder / m["name"])
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
