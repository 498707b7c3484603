"""What `tunesmith serve --capture` keeps: each request and its answer, with the model and adapter version
that gave it, and what the app's users said about it (`POST /v1/feedback`: thumbs up or down, a
correction). Off unless asked. Stored in the run registry beside the runs, so a reviewer can take
them into a review queue and their corrections into the next version's data; `tunesmith review purge
--before DATE` deletes them.

A capture never fails or slows an answer by more than one short SQLite transaction: a registry that
cannot be written is reported once on stderr and the server goes on answering. Each call opens its own
connection, so the server's threads never share one.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.registry.db import Registry, default_path

RATINGS = ("up", "down")


class Captures:
    """The server's side: add a capture, add feedback to one. `where` is the registry path."""

    def __init__(self, where: str | Path | None, versions: dict[str, tuple[str | None, str | None]]):
        self.where = where
        # served model name -> (its adapter's folder, that adapter's run id); (None, None) for the base model
        self.versions = versions
        self.warned = False
        try:  # a registry that cannot be opened is said at start, not on the first request
            reg = Registry(where)
        except (sqlite3.Error, OSError) as e:
            raise UserError(
                f"--capture: the registry {where or default_path()} cannot be opened ({e})"
            ) from None
        self.where = reg.path
        reg.close()

    def _open(self) -> Registry | None:
        try:
            return Registry(self.where)
        except (sqlite3.Error, OSError) as e:
            self._warn(e)
            return None

    def _warn(self, e: Exception) -> None:
        if not self.warned:
            self.warned = True
            print(f"serve --capture: registry {self.where} skipped ({e}); answers go on", file=sys.stderr)

    def add(self, rid: str, model: str, request: dict, response: str, finish: str | None) -> None:
        reg = self._open()
        if reg is None:
            return
        try:
            adapter, run = self.versions.get(model, (None, None))
            answer = json.dumps({"text": response, "finish": finish})
            with reg.tx() as db:
                db.execute(
                    "INSERT INTO captures (id, at, model, adapter, run, request, response) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (rid, time.time(), model, adapter, run, json.dumps(request), answer),
                )
        except sqlite3.Error as e:
            self._warn(e)
        finally:
            reg.close()

    def feedback(self, rid: str, rating: str | None, correction: str | None) -> bool | None:
        """Record feedback on a captured answer; False when no capture has that id, None when the registry
        could not be written (said once on stderr)."""
        reg = self._open()
        if reg is None:
            return None
        try:
            with reg.tx() as db:
                if not db.execute("SELECT 1 FROM captures WHERE id = ?", (rid,)).fetchone():
                    return False
                db.execute(
                    "INSERT INTO feedback (capture, at, rating, correction) VALUES (?, ?, ?, ?)",
                    (rid, time.time(), rating, correction),
                )
            return True
        except sqlite3.Error as e:
            self._warn(e)
            return None
        finally:
            reg.close()


def captured(reg: Registry, since: float | None = None) -> list[dict]:
    """Captures (oldest first) with their newest feedback: request, response, rating, correction."""
    rows = reg.db.execute(
        "SELECT c.*, (SELECT rating FROM feedback f WHERE f.capture = c.id AND rating IS NOT NULL "
        "ORDER BY f.at DESC, f.id DESC LIMIT 1) AS rating, (SELECT correction FROM feedback f WHERE "
        "f.capture = c.id AND correction IS NOT NULL ORDER BY f.at DESC, f.id DESC LIMIT 1) AS correction "
        "FROM captures c WHERE c.at >= ? ORDER BY c.at, c.id",
        (since or 0.0,),
    )
    return [
        {**dict(r), "request": json.loads(r["request"]), "response": json.loads(r["response"])} for r in rows
    ]
