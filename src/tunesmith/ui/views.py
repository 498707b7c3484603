"""What the web app's API says about one run, as declared models (pydantic), one section per kind.

Why declared: the run page once read `systems[0].examples` as a list of examples for every run, and for
a training run the registry's result had `examples` as a count: the run every user clicks first showed
one red line of JavaScript. Here each kind has its own section (`train`, `eval`, `output`), each field
one type, and `RunDetail` is validated before it leaves the server (tests check every kind against it),
so a count in one kind and a list in another cannot reach the page again.

What a page cannot show is said in words (`notes`): a run folder deleted after it was registered, an
eval written by an older version, a run still running or stopped, a result that is not what this
version writes. The registry's JSON is read defensively: anything can be in it (`runs import`, older
versions, a hand edit), and a bad field becomes a note, never a 500.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from tunesmith.registry.db import STATUSES, Registry
from tunesmith.train.rundir import partial_dir

Status = Literal[STATUSES]  # type: ignore[valid-type]
OUTPUT_KINDS = ("merge", "export")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Summary(Model):
    id: str
    name: str
    kind: str
    status: Status
    method: str | None = None
    model: str | None = None
    started: float | None = None
    ended: float | None = None
    headline_metric: str | None = None
    headline: float | None = None
    tags: list[str] = []


class DataFile(Model):
    role: str
    path: str
    sha256: str | None = None
    bytes: int | None = None
    examples: int | None = None


class Artefact(Model):
    kind: str
    path: str
    sha256: str | None = None
    bytes: int | None = None
    present: bool


class Point(Model):
    step: int | None = None
    epoch: int | None = None
    name: str
    value: float | None = None


class Link(Model):
    id: str
    name: str | None = None
    relation: str | None = None
    parent_path: str | None = None


class Child(Summary):
    run: str
    relation: str
    gate: bool | None = None  # an eval's gate: passed, failed, or none asked


class Example(BaseModel):
    """One scored example of an eval (results.json's fields; newer fields pass through)."""

    model_config = ConfigDict(extra="allow")
    path: str | None = None
    line: int | str | None = None
    input: str = ""
    reference: str | list[str] | None = None
    output: str = ""
    scores: dict[str, float | None] = {}
    format_ok: bool | None = None
    style: dict[str, bool | None] | None = None


class Test(BaseModel):
    """A paired test against another system or an earlier eval (scoring/stats.paired_test)."""

    model_config = ConfigDict(extra="allow")
    change: float | None = None
    ci: list[float] | None = None
    p: float | None = None
    significant: bool = False


class System(Model):
    system: str
    metrics: dict[str, float | None]
    intervals: dict[str, list[float]] = {}
    examples: list[Example]
    against: str | None = None  # the system its `tests` compare with
    tests: dict[str, Test] = {}


class EvalView(Model):
    systems: list[System]
    verdict: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    baseline: dict[str, Test] | None = None  # --baseline: the paired tests against the earlier eval
    data: str | None = None
    decoding: dict[str, Any] | None = None
    task: str | None = None  # a --task eval: classify, multilabel or regress (no failure groups)


class Checkpoint(Model):
    step: int
    path: str
    best: bool = False


class Progress(Model):
    step: int | None = None
    loss: float | None = None
    updated: float | None = None
    folder: str


class Study(Model):
    key: str
    name: str


class TrainView(Model):
    examples: dict[str, int | None] = {}
    steps: int | None = None
    train_loss: float | None = None
    wall_s: float | None = None
    tokens_per_s: float | None = None
    best: dict[str, float | int | None] | None = None
    early_stopped: bool | None = None
    checkpoints: list[Checkpoint] = []
    study: Study | None = None
    progress: Progress | None = None
    evals: list[Child] = []


class OutputView(Model):
    facts: dict[str, str | int | float | bool | None] = {}
    verify: dict[str, Any] | None = None


class RunDetail(Summary):
    path: str | None = None
    folder: Literal["present", "missing", "none"]
    error: str | None = None
    attempts: int = 1
    config: dict[str, Any] | None = None
    data: list[DataFile] = []
    artefacts: list[Artefact] = []
    metrics: list[Point] = []
    lineage: list[Link] = []
    children: list[Child] = []
    notes: list[str] = []
    train: TrainView | None = None
    eval: EvalView | None = None
    output: OutputView | None = None

    @model_validator(mode="after")
    def _one_section_per_kind(self):
        want = {
            "train": self.kind == "train",
            "eval": self.kind == "eval",
            "output": self.kind in OUTPUT_KINDS,
        }
        for section, expected in want.items():
            if (getattr(self, section) is not None) != expected:
                raise ValueError(f"a {self.kind} run {'needs' if expected else 'has no'} a {section} section")
        return self


# ------------------------------------------------------------------------------------------ building


def num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def summary(r: dict) -> dict:
    """A registry row as the runs list shows it: the fields of `Summary`."""
    return {**{k: r.get(k) for k in Summary.model_fields}, "tags": r.get("tags") or []}


def study_key(folder: Path) -> str:
    """A sweep's or curve's folder as the key a request names (never a path)."""
    return hashlib.sha256(str(folder).encode()).hexdigest()[:12]


def folder_state(path: str | None) -> str:
    if not path:
        return "none"
    try:
        return "present" if Path(path).exists() else "missing"
    except (OSError, ValueError):
        return "missing"


def present(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def child(reg: Registry, c: dict) -> dict:
    r = reg.get(c["run"])
    gate = (r.get("result") or {}).get("gate") if r["kind"] == "eval" else None
    passed = gate.get("passed") if isinstance(gate, dict) else None
    return {**summary(r), "run": c["run"], "relation": c["relation"], "gate": passed}


def run_detail(reg: Registry, run_id: str) -> dict:
    """One run for the page: what every run has, and the section of its kind (validated: RunDetail)."""
    r = reg.get(reg.find(run_id, paths=False))
    result = r.get("result") if isinstance(r.get("result"), dict) else {}
    notes: list[str] = []
    folder = folder_state(r.get("path"))
    if folder == "missing" and r["status"] == "done":
        notes.append(f"its folder {r['path']} is gone (deleted or moved): what the registry kept is shown")
    if r["status"] == "failed":
        notes.append("it failed: " + (r.get("error") or "no reason was recorded"))
    children = [child(reg, c) for c in r["children"]]
    view = {
        **summary(r),
        "path": r.get("path"),
        "folder": folder,
        "error": r.get("error"),
        "attempts": r.get("attempts") or 1,
        "config": r.get("config") if isinstance(r.get("config"), dict) else None,
        "data": r["data"],
        "artefacts": [{**a, "present": present(a["path"])} for a in r["artefacts"]],
        "metrics": r["metrics"],
        "lineage": reg.lineage(r["id"]),
        "children": children,
        "notes": notes,
    }
    if r["kind"] == "train":
        view["train"] = train_view(r, result, children, notes)
    elif r["kind"] == "eval":
        view["eval"] = eval_view(result, notes)
    elif r["kind"] in OUTPUT_KINDS:
        view["output"] = output_view(result)
    return RunDetail.model_validate(view).model_dump()


def train_view(r: dict, result: dict, children: list[dict], notes: list[str]) -> dict:
    out = Path(r["path"]) if r.get("path") else None
    best = result.get("best") if isinstance(result.get("best"), dict) else None
    examples = result.get("examples")
    counts = {d["role"]: d["examples"] for d in r["data"] if d.get("examples") is not None}
    if isinstance(examples, int) and not counts:
        counts = {"train": examples}
    view = {
        "examples": counts,
        "steps": result.get("steps") if isinstance(result.get("steps"), int) else None,
        "train_loss": num(result.get("train_loss")),
        "wall_s": num(result.get("wall_s")),
        "tokens_per_s": num(result.get("tokens_per_s")),
        "best": {k: v for k, v in best.items() if num(v) is not None} if best else None,
        "early_stopped": result.get("early_stopped")
        if isinstance(result.get("early_stopped"), bool)
        else None,
        "evals": [c for c in children if c["kind"] == "eval"],
    }
    if out is not None:
        view["checkpoints"] = checkpoints(out, best)
        view["study"] = study_of(out)
    if r["status"] in ("running", "interrupted") and out is not None:
        view["progress"] = progress(out)
        if r["status"] == "interrupted":
            notes.append(
                f"it stopped before it finished (its process is gone); `tunesmith train --resume {out}` "
                "continues it from its last checkpoint"
            )
    return view


def checkpoints(out: Path, best: dict | None) -> list[dict]:
    """The checkpoints kept in the run folder (or its unfinished folder), the best step marked."""
    found = []
    for folder in (out, partial_dir(out)):
        try:
            steps = sorted((folder / "checkpoints").glob("step-*"))
        except (OSError, ValueError):
            continue
        for s in steps:
            try:
                step = int(s.name.split("-", 1)[1])
            except ValueError:
                continue
            found.append({"step": step, "path": str(s), "best": bool(best and best.get("step") == step)})
        if found:
            break
    return found


def progress(out: Path) -> dict:
    """How far a running (or stopped) run got: the last step and loss its metrics file holds."""
    work = partial_dir(out)
    step, loss, updated = None, None, None
    try:
        lines = (work / "metrics.jsonl").read_text().splitlines()[-200:]
        updated = (work / "metrics.jsonl").stat().st_mtime
    except (OSError, ValueError):
        lines = []
    for line in lines:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if isinstance(m, dict) and num(m.get("loss")) is not None:
            step, loss = m.get("step") if isinstance(m.get("step"), int) else step, num(m["loss"])
    return {"step": step, "loss": loss, "updated": updated, "folder": str(work)}


def study_of(out: Path) -> dict | None:
    """The sweep or learning curve a trial belongs to (the folder above it holds the study's report)."""
    folder = out.parent
    try:
        if not (folder / "report.html").is_file():
            return None
    except (OSError, ValueError):
        return None
    return {"key": study_key(folder), "name": folder.name}


def label_eval_view(result: dict) -> dict:
    """A --task eval (eval/labels.py): each system's measures; the tuned one with its examples and its
    paired tests against the first baseline (results.json keeps them under "comparisons", by baseline)."""
    comps = result.get("comparisons") if isinstance(result.get("comparisons"), dict) else {}
    first = next((k for k, v in comps.items() if isinstance(v, dict)), None)
    systems = []
    for s in [x for x in result.get("systems") or [] if isinstance(x, dict)]:
        metrics = s.get("metrics") if isinstance(s.get("metrics"), dict) else {}
        ci = metrics.get("ci95") if isinstance(metrics.get("ci95"), dict) else {}
        tuned = s.get("system") == "tuned"
        examples = [
            {
                "path": str(e.get("where", "")).rpartition(":")[0] or None,
                "line": str(e.get("where", "")).rpartition(":")[2],
                "input": str(e.get("text", "")),
                "reference": json.dumps(e.get("gold")),
                "output": json.dumps(e.get("label", e.get("labels", e.get("value")))),
            }
            for e in (result.get("examples") or [])
            if tuned and isinstance(e, dict)
        ]
        systems.append(
            {
                "system": str(s.get("system")),
                "examples": examples,
                "metrics": {k: num(v) for k, v in metrics.items() if k != "ci95" and num(v) is not None},
                "intervals": {k: v for k, v in ci.items() if isinstance(v, list) and len(v) == 2},
                "against": first if tuned else None,
                "tests": {k: v for k, v in (comps.get(first) or {}).items() if isinstance(v, dict)}
                if tuned
                else {},
            }
        )
    data = result.get("data") if isinstance(result.get("data"), str) else None
    return {"systems": systems, "data": data, "task": result["task"]}


def eval_view(result: dict, notes: list[str]) -> dict:
    """An eval's systems (one, or several compared with the first), with intervals and paired tests."""
    if result.get("task") in ("classify", "multilabel", "regress"):
        return label_eval_view(result)
    raw = result.get("systems") if isinstance(result.get("systems"), list) else [result]
    systems = []
    for s in raw:
        if not isinstance(s, dict):
            continue
        metrics = s.get("metrics") if isinstance(s.get("metrics"), dict) else {}
        examples = s.get("examples") if isinstance(s.get("examples"), list) else []
        comps = s.get("comparisons") if isinstance(s.get("comparisons"), dict) else {}
        against, tests = next(((k, v) for k, v in comps.items() if isinstance(v, dict)), (None, {}))
        ci = metrics.get("ci95") if isinstance(metrics.get("ci95"), dict) else {}
        systems.append(
            {
                "system": str(s.get("system") or "model"),
                "metrics": {k: num(v) for k, v in metrics.items() if k != "ci95" and num(v) is not None},
                "intervals": {k: v for k, v in ci.items() if isinstance(v, list) and len(v) == 2},
                "examples": [e for e in examples if isinstance(e, dict)],
                "against": against,
                "tests": {k: v for k, v in tests.items() if isinstance(v, dict)},
            }
        )
    if not systems or not any(s["examples"] for s in systems):
        notes.append(
            "its results hold no examples (written by an older version, or cut short): only its metrics "
            "are shown; run the eval again to see its examples"
        )
    baseline = result.get("comparison") if isinstance(result.get("comparison"), dict) else None
    return {
        "systems": systems,
        "verdict": result.get("verdict") if isinstance(result.get("verdict"), dict) else None,
        "gate": result.get("gate") if isinstance(result.get("gate"), dict) else None,
        "baseline": {k: v for k, v in baseline.items() if isinstance(v, dict)} if baseline else None,
        "data": result.get("data") if isinstance(result.get("data"), str) else None,
        "decoding": result.get("decoding") if isinstance(result.get("decoding"), dict) else None,
    }


def output_view(result: dict) -> dict:
    """A merge's or an export's facts (size, architecture, dtype or quantization) and its verification."""
    facts = {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool)) or v is None}
    verify = result.get("verify") if isinstance(result.get("verify"), dict) else None
    return {"facts": facts, "verify": verify}
