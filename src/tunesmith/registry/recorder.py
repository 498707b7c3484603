"""The registry as the rest of tunesmith uses it, where it must never stand in the way: `Recorder`
(a run enters itself; a registry that fails is skipped with one line, never the run) and
`adapter_path` (an --adapter given as a run id or tag becomes its folder; anything unknown is left
for the command's own message)."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.registry.db import Registry, default_path, is_off


def adapter_path(ref: str | None, registry_path: str | Path | None = None) -> str | None:
    """An --adapter / --from-adapter value: a folder as it is; else a run id, tag (v10, production) or run
    name in the registry, as its run directory. Anything not found is returned unchanged, for the
    command's own "no such adapter" message."""
    if not ref or Path(ref).exists() or is_off(registry_path):
        return ref
    path = Path(registry_path).expanduser() if registry_path else default_path()
    if not path.is_file():
        return ref
    try:
        reg = Registry(path)
        try:
            run = reg.get(reg.find(ref))
        finally:
            reg.close()
    except (sqlite3.Error, OSError, UserError):
        return ref
    if run["kind"] != "train" or not run["path"]:
        raise UserError(f"--adapter {ref}: names {run['kind']} run {run['id']}, not a training run")
    if not Path(run["path"]).is_dir():
        raise UserError(
            f"--adapter {ref}: run {run['id']} ({run['name']}) was in {run['path']}, which is gone; "
            "`tunesmith runs rm` it, or restore the folder"
        )
    return run["path"]


class Recorder:
    """The registry as a run uses it: every call is safe. A registry that cannot be opened or written
    (missing folder rights, read-only, locked past the timeout, corrupt) is skipped with one line on
    stderr saying why, and the run goes on; `tunesmith runs import` adds it later."""

    def __init__(self, path: str | Path | None = None, off: bool = False):
        self.path, self.reg = path, None
        self.off = off or is_off(path)

    def _call(self, fn, *args, **kw):
        if self.off:
            return None
        try:
            if self.reg is None:
                self.reg = Registry(self.path)
            return fn(self.reg, *args, **kw)
        except (sqlite3.Error, OSError, UserError, ValueError) as e:
            self.off = True
            where = self.path or default_path()
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(
                f"registry {where} skipped ({why}); the run is unaffected: add it later with "
                "`tunesmith runs import RUN_DIR`",
                file=sys.stderr,
            )
            return None

    def begin(self, run_id: str, **kw) -> None:
        self._call(Registry.begin, run_id, **kw)

    def end(self, run_id: str, status: str, error: str | None = None) -> None:
        self._call(Registry.end, run_id, status, error=error)

    def record_run_dir(self, folder: Path) -> None:
        self._call(Registry.record_run_dir, folder)

    def add(self, **kw) -> str | None:
        return self._call(Registry.add, **kw)

    def close(self) -> None:
        if self.reg is not None:
            with contextlib.suppress(sqlite3.Error):
                self.reg.close()
