"""The run registry: a memory of every run and where it came from, in one local SQLite file.

`$TUNESMITH_HOME/registry.db` by default; `--registry PATH` or `TUNESMITH_REGISTRY` to share one per
project. Each run is a row (kind, status, method, base model, config, versions, machine, the
headline numbers) with its data files (sha256, example counts), its metrics curve, its artefacts
(paths and sha256) and its parents (the adapter it continued from; later the run a merge or an
export came from), so `tunesmith runs show v7` can say what data and settings made v7.

The run directory stays the source of truth. A finished run is registered from what it wrote
(`tunesmith-run.json`, `inputs.json`, `metrics.jsonl`): the same code as `tunesmith runs import
DIR`, so a registry that was missing or broken during training is rebuilt from the folders. And a
registry that is missing, locked, corrupt or read-only never fails or slows a training run:
`Recorder` warns once, says why, and carries on without it.

SQLite as SQLite is meant to be shared by processes on one machine: WAL mode (readers never wait
for the writer), a busy timeout, and short `BEGIN IMMEDIATE` transactions (a writer takes the lock
up front instead of failing half-way on an upgrade); the schema has a version (`user_version`) and
numbered migrations. A run whose process is gone while it still says "running" (a kill -9, a
power cut) is shown as interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
import uuid
from pathlib import Path

from tunesmith.errors import NotFound, UserError
from tunesmith.files.home import home
from tunesmith.registry.runfolder import environment, read_run_dir

BUSY_TIMEOUT_S = 10.0


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


STATUSES = ("running", "done", "failed", "interrupted")

# Each entry migrates the schema from version i to i + 1; never edit one that has shipped, add one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
            method TEXT, model TEXT, model_sha256 TEXT, path TEXT, host TEXT, pid INTEGER,
            started REAL NOT NULL, ended REAL, attempts INTEGER NOT NULL DEFAULT 1,
            config TEXT, environment TEXT, result TEXT, headline_metric TEXT, headline REAL, error TEXT)""",
        "CREATE INDEX runs_started ON runs(started)",
        "CREATE INDEX runs_path ON runs(path)",
        """CREATE TABLE parents (run TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            parent TEXT, parent_path TEXT, relation TEXT NOT NULL)""",
        """CREATE TABLE data (run TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            role TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT, bytes INTEGER, examples INTEGER)""",
        """CREATE TABLE metrics (run TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER, epoch INTEGER, name TEXT NOT NULL, value REAL)""",
        "CREATE INDEX metrics_run ON metrics(run)",
        """CREATE TABLE artefacts (run TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            kind TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT, bytes INTEGER)""",
        """CREATE TABLE tags (tag TEXT PRIMARY KEY, run TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            created REAL NOT NULL)""",
    ],
    [  # 2: which run was in production for each model line, and since when (a history, kept after `runs rm`)
        "CREATE TABLE promotions (line TEXT NOT NULL, run TEXT NOT NULL, at REAL NOT NULL)",
    ],
    [  # 3: people's judgements (review/store.py) and what `serve --capture` kept (registry/captures.py)
        """CREATE TABLE review_queues (name TEXT PRIMARY KEY, a TEXT NOT NULL, b TEXT NOT NULL,
            sources TEXT NOT NULL, created REAL NOT NULL)""",
        """CREATE TABLE review_items (id INTEGER PRIMARY KEY,
            queue TEXT NOT NULL REFERENCES review_queues(name) ON DELETE CASCADE, example INTEGER NOT NULL,
            path TEXT, line TEXT, prompt TEXT NOT NULL, digest TEXT NOT NULL, reference TEXT,
            outputs TEXT NOT NULL, capture TEXT, UNIQUE (queue, example))""",
        """CREATE TABLE judgements (id INTEGER PRIMARY KEY,
            item INTEGER NOT NULL REFERENCES review_items(id) ON DELETE CASCADE, reviewer TEXT NOT NULL,
            kind TEXT NOT NULL, left TEXT, right TEXT, choice TEXT, label TEXT, rating INTEGER, tags TEXT,
            comment TEXT, correction TEXT, at REAL NOT NULL)""",
        "CREATE INDEX judgements_item ON judgements(item)",
        """CREATE TABLE captures (id TEXT PRIMARY KEY, at REAL NOT NULL, model TEXT, adapter TEXT, run TEXT,
            request TEXT NOT NULL, response TEXT NOT NULL)""",
        "CREATE INDEX captures_at ON captures(at)",
        """CREATE TABLE feedback (id INTEGER PRIMARY KEY,
            capture TEXT NOT NULL REFERENCES captures(id) ON DELETE CASCADE, at REAL NOT NULL,
            rating TEXT, correction TEXT)""",
    ],
]
PRODUCTION = "production"
SCHEMA = len(MIGRATIONS)


def default_path() -> Path:
    env = os.environ.get("TUNESMITH_REGISTRY")
    return Path(env).expanduser() if env else home() / "registry.db"


def production_tag(line: str = "") -> str:
    """The tag of the run in production: `production`, or `LINE:production` for one of several model lines."""
    return f"{line}:{PRODUCTION}" if line else PRODUCTION


def new_id() -> str:
    """A short id to type: 8 hex digits (collisions are checked on insert)."""
    return uuid.uuid4().hex[:8]


def is_off(path) -> bool:
    """--registry off (or none): no registry at all. No flag (None) is the default registry, which
    TUNESMITH_REGISTRY=off turns off for everything a process runs (the benchmarks set it)."""
    if path is None:
        path = os.environ.get("TUNESMITH_REGISTRY")
    return isinstance(path, (str, Path)) and str(path).lower() in ("off", "none")


def alive(pid: int | None, host: str | None) -> bool:
    """Whether a run's process still exists (on this host; another host's runs are taken at their word)."""
    if not pid:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """One registry file, opened for reading and writing. Errors are sqlite3.Error or OSError; callers
    that must not fail go through `Recorder`."""

    def __init__(self, path: str | Path | None = None):
        if is_off(path):  # never a database file named "off" in the working directory
            raise UserError(
                "the registry is off (--registry off, or TUNESMITH_REGISTRY=off) and this needs one: give a "
                "registry, or a file the command reads without one"
            )
        self.path = Path(path).expanduser() if path else default_path()
        if self.path.is_dir():
            raise UserError(
                f"--registry {self.path}: is a folder; give a file (e.g. {self.path / 'registry.db'})"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self.db.execute("PRAGMA journal_mode = WAL")
        # with WAL: no corruption on a crash, commits stay cheap
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def tx(self):
        """A short write transaction that takes the write lock up front (BEGIN IMMEDIATE)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA:
            return
        if version > SCHEMA:
            raise UserError(
                f"{self.path}: written by a newer tunesmith (registry schema {version}; this one knows "
                f"{SCHEMA}); upgrade tunesmith"
            )
        with self.tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            for i in range(version, SCHEMA):
                for statement in MIGRATIONS[i]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA}")

    # ------------------------------------------------------------ writing

    def begin(
        self,
        run_id: str,
        *,
        kind: str,
        name: str,
        path: str | None = None,
        method: str | None = None,
        model: str | None = None,
        model_sha256: str | None = None,
        config: dict | None = None,
        data: list[dict] = (),
        parents: list[tuple[str, str]] = (),
    ) -> str:
        """A run starts (or starts again: a resume keeps its id, counts an attempt)."""
        env = json.dumps(environment())
        here = {"pid": os.getpid(), "host": socket.gethostname()}
        with self.tx() as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                db.execute(
                    "UPDATE runs SET status = 'running', pid = :pid, host = :host, attempts = attempts + 1,"
                    " ended = NULL, error = NULL, environment = :env WHERE id = :id",
                    {**here, "env": env, "id": run_id},
                )
                return run_id
            config_json = json.dumps(config) if config is not None else None
            row = dict(id=run_id, name=name, kind=kind, status="running", method=method, model=model,
                       model_sha256=model_sha256, path=path, **here, started=time.time(),
                       config=config_json, environment=env)  # fmt: skip
            self._put_run(db, row, data, parents)
        return run_id

    def end(self, run_id: str, status: str, *, error: str | None = None) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE runs SET status = ?, ended = ?, error = ?, pid = NULL WHERE id = ?",
                (status, time.time(), error, run_id),
            )

    def record_run_dir(self, folder: str | Path) -> str:
        """Register (or refresh) a finished run from its directory; returns its id."""
        rec = read_run_dir(Path(folder))
        with self.tx() as db:
            row = db.execute("SELECT started, attempts FROM runs WHERE id = ?", (rec["id"],)).fetchone()
            tags = db.execute("SELECT tag, created FROM tags WHERE run = ?", (rec["id"],)).fetchall()
            # a run's rows are replaced whole (deleting cascades to its data, metrics, artefacts, tags)
            db.execute("DELETE FROM runs WHERE id = ?", (rec["id"],))
            run = {
                k: rec[k] for k in ("id", "name", "method", "model", "model_sha256", "path", "host", "ended")
            }
            run.update(kind="train", status="done", started=row["started"] if row else rec["started"],
                       attempts=row["attempts"] if row else 1 + len(rec["resumes"]),
                       config=json.dumps(rec["config"]), environment=json.dumps(rec["environment"]),
                       result=json.dumps(rec["result"]), headline_metric=rec["headline_metric"],
                       headline=rec["headline"])  # fmt: skip
            self._put_run(db, run, rec["data"], rec["parents"], rec["metrics"], rec["artefacts"])
            db.executemany(
                "INSERT INTO tags (tag, run, created) VALUES (?, ?, ?)",
                [(t[0], rec["id"], t[1]) for t in tags],
            )
        return rec["id"]

    def add(
        self,
        *,
        kind: str,
        name: str,
        path: str | None,
        model: str | None,
        config: dict,
        data: list[dict],
        parents: list[tuple[str, str]],
        result: dict,
        metrics: list[tuple[int | None, int | None, str, float]],
        headline: tuple[str | None, float | None] = (None, None),
        artefacts: list[dict] = (),
        started: float | None = None,
    ) -> str:
        """A run that is done when it is registered (an eval, a merge, an export); returns its id."""
        now, env = time.time(), environment()
        with self.tx() as db:
            run_id = new_id()
            while db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                run_id = new_id()
            row = {"id": run_id, "name": name, "kind": kind, "status": "done", "model": model, "path": path,
                   "host": env["machine"]["host"], "started": started or now, "ended": now,
                   "config": json.dumps(config), "environment": json.dumps(env), "result": json.dumps(result),
                   "headline_metric": headline[0], "headline": headline[1]}  # fmt: skip
            self._put_run(db, row, data, parents, metrics, artefacts)
        return run_id

    def _put_run(self, db, row: dict, data=(), parents=(), metrics=(), artefacts=()) -> None:
        """A run's row and the rows that hang off it (column names come from this module, not from input)."""
        db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})", row)
        run_id = row["id"]
        self._put_data(db, run_id, data)
        self._put_parents(db, run_id, parents)
        db.executemany(
            "INSERT INTO metrics (run, step, epoch, name, value) VALUES (?, ?, ?, ?, ?)",
            [(run_id, *m) for m in metrics],
        )
        db.executemany(
            "INSERT INTO artefacts (run, kind, path, sha256, bytes) VALUES (?, ?, ?, ?, ?)",
            [(run_id, a["kind"], a["path"], a["sha256"], a["bytes"]) for a in artefacts],
        )

    def _put_data(self, db, run_id: str, data) -> None:
        db.executemany(
            "INSERT INTO data (run, role, path, sha256, bytes, examples) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (run_id, d.get("role", "data"), d["path"], d.get("sha256"), d.get("bytes"), d.get("examples"))
                for d in data
            ],
        )

    def _put_parents(self, db, run_id: str, parents) -> None:
        for relation, parent_path in parents:
            found = db.execute(
                "SELECT id FROM runs WHERE path = ? ORDER BY started DESC LIMIT 1", (parent_path,)
            ).fetchone()
            db.execute(
                "INSERT INTO parents (run, parent, parent_path, relation) VALUES (?, ?, ?, ?)",
                (run_id, found["id"] if found else None, parent_path, relation),
            )

    def tag(self, run_id: str, tag: str) -> str | None:
        """Point `tag` at a run (moving it from another run); returns the run it was on before."""
        if not tag or any(c.isspace() for c in tag):
            raise UserError(f"tag {tag!r}: a tag is one word (like v10 or production)")
        with self.tx() as db:
            return self._move_tag(db, run_id, tag)

    def _move_tag(self, db, run_id: str, tag: str) -> str | None:
        old = db.execute("SELECT run FROM tags WHERE tag = ?", (tag,)).fetchone()
        db.execute(
            "INSERT INTO tags (tag, run, created) VALUES (?, ?, ?)"
            " ON CONFLICT(tag) DO UPDATE SET run = excluded.run, created = excluded.created",
            (tag, run_id, time.time()),
        )
        return old["run"] if old and old["run"] != run_id else None

    def promote(self, run_id: str, line: str = "") -> str | None:
        """Make a training run the one in production (of `line`, a model line, when a project has several):
        the tag `production` (`LINE:production`) moves to it and the promotion is kept in the history.
        Returns the run that was in production before."""
        run = self.db.execute("SELECT kind, name FROM runs WHERE id = ?", (run_id,)).fetchone()
        if run is None or run["kind"] != "train":
            raise UserError(f"runs promote {run_id}: only a training run (an adapter) can be in production")
        if line and (":" in line or any(c.isspace() for c in line)):
            raise UserError(f"--line {line!r}: one word without ':'")
        with self.tx() as db:  # the tag and the history move together
            before = self._move_tag(db, run_id, production_tag(line))
            db.execute("INSERT INTO promotions (line, run, at) VALUES (?, ?, ?)", (line, run_id, time.time()))
        return before

    def promotions(self, line: str | None = "", run: str | None = None) -> list[dict]:
        """The promotion history of a model line (every line with line=None), or of one run, newest first:
        line, run, at, and until / replaced_by (the next promotion on the line; None while in production)."""
        rows = [dict(r) for r in self.db.execute("SELECT line, run, at FROM promotions ORDER BY at, rowid")]
        after: dict[str, tuple] = {}
        for r in reversed(rows):
            r["until"], r["replaced_by"] = after.get(r["line"], (None, None))
            after[r["line"]] = (r["at"], r["run"])
        return [r for r in rows[::-1] if (line is None or r["line"] == line) and run in (None, r["run"])]

    def untag(self, tag: str) -> bool:
        with self.tx() as db:
            return db.execute("DELETE FROM tags WHERE tag = ?", (tag,)).rowcount > 0

    def remove(self, run_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE parents SET parent = NULL WHERE parent = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # ------------------------------------------------------------ reading

    def find(self, ref: str, paths: bool = True) -> str:
        """A run id from an id, a unique id prefix (4+ characters), a tag, a run name or a run directory.
        A name is a version's: the newest training run of that name, and only without one the newest
        run of another kind (an eval written to eval/v1 is also named v1; `v1` still means the adapter).
        `paths=False` (the web app): a reference is never looked up on disk."""
        db = self.db
        if db.execute("SELECT 1 FROM runs WHERE id = ?", (ref,)).fetchone():
            return ref
        row = db.execute("SELECT run FROM tags WHERE tag = ?", (ref,)).fetchone()
        if row:
            return row["run"]
        if len(ref) >= 4:
            prefix = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = db.execute("SELECT id FROM runs WHERE id LIKE ? || '%' ESCAPE '\\'", (prefix,)).fetchall()
            if len(rows) == 1:
                return rows[0]["id"]
            if len(rows) > 1:
                raise UserError(f"run {ref!r}: {len(rows)} run ids start with it; give more of the id")
        row = db.execute(
            "SELECT id FROM runs WHERE name = ? ORDER BY kind = 'train' DESC, started DESC LIMIT 1", (ref,)
        ).fetchone()
        if row:
            return row["id"]
        p = Path(ref)
        if paths and _exists(p):
            row = db.execute(
                "SELECT id FROM runs WHERE path = ? ORDER BY started DESC LIMIT 1", (str(p.resolve()),)
            ).fetchone()
            if row:
                return row["id"]
        raise NotFound(
            f"run {ref!r}: no such run id, tag, name or registered run directory in {self.path}; "
            "see `tunesmith runs`"
        )

    def runs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        name: str | None = None,
        model: str | None = None,
        tag: str | None = None,
        data: str | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Runs, newest first; a running run whose process is gone comes back as interrupted."""
        where, args = [], []
        for column, value in (("kind", kind), ("model", model)):
            if value:
                where.append(f"runs.{column} = ?")
                args.append(value)
        if name:
            where.append("runs.name LIKE ?")
            args.append(f"%{name}%")
        if tag:
            where.append("runs.id IN (SELECT run FROM tags WHERE tag = ?)")
            args.append(tag)
        if data:
            where.append("runs.id IN (SELECT run FROM data WHERE path LIKE ? OR sha256 LIKE ? || '%')")
            args += [f"%{data}%", data]
        sql = (
            "SELECT * FROM runs"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY started DESC"
        )
        out = [self._row(r) for r in self.db.execute(sql, args).fetchall()]
        if status:
            out = [r for r in out if r["status"] == status]
        return out[:limit] if limit else out

    def _row(self, r: sqlite3.Row) -> dict:
        rec = dict(r)
        for k in ("config", "environment", "result"):
            rec[k] = json.loads(rec[k]) if rec[k] else None
        if rec["status"] == "running" and not alive(rec["pid"], rec["host"]):
            rec["status"] = "interrupted"  # its process is gone: a kill, a crash, a power cut
        rec["tags"] = [
            t["tag"] for t in self.db.execute("SELECT tag FROM tags WHERE run = ? ORDER BY tag", (rec["id"],))
        ]
        return rec

    def get(self, run_id: str) -> dict:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"run {run_id}: not in {self.path}")
        rec = self._row(row)
        q = self.db.execute
        rec["data"] = [
            dict(d)
            for d in q("SELECT role, path, sha256, bytes, examples FROM data WHERE run = ?", (run_id,))
        ]
        rec["parents"] = [
            dict(p) for p in q("SELECT parent, parent_path, relation FROM parents WHERE run = ?", (run_id,))
        ]
        rec["children"] = [
            dict(c) for c in q("SELECT run, relation FROM parents WHERE parent = ? ORDER BY rowid", (run_id,))
        ]
        rec["artefacts"] = [
            dict(a) for a in q("SELECT kind, path, sha256, bytes FROM artefacts WHERE run = ?", (run_id,))
        ]
        rec["metrics"] = [
            dict(m)
            for m in q("SELECT step, epoch, name, value FROM metrics WHERE run = ? ORDER BY rowid", (run_id,))
        ]
        return rec

    def lineage(self, run_id: str) -> list[dict]:
        """The chain of ancestors, oldest first, ending with the run itself: [{id, name, relation}]."""
        chain, seen, current = [], set(), run_id
        while current and current not in seen:
            seen.add(current)
            row = self.db.execute("SELECT id, name FROM runs WHERE id = ?", (current,)).fetchone()
            parent = self.db.execute(
                "SELECT parent, parent_path, relation FROM parents WHERE run = ?", (current,)
            ).fetchone()
            chain.append(
                {
                    "id": current,
                    "name": row["name"] if row else None,
                    "relation": parent["relation"] if parent else None,
                    "parent_path": parent["parent_path"] if parent else None,
                }
            )
            current = parent["parent"] if parent else None
        return chain[::-1]
