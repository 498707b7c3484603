"""Read example files and normalize every supported shape to a chat: a list of messages.

Shapes: chat {"messages": [...]}, {"prompt", "completion"}, alpaca {"instruction", "input",
"output"}, sharegpt {"conversations": [{"from", "value"}]}. Extra top-level keys are kept
as metadata (e.g. "meeting" for grouping).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tunesmith.errors import DataErrors, UserError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
SUFFIXES = (".jsonl", ".json")


@dataclass
class Issue:
    path: str
    line: int
    field: str
    message: str
    level: str = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"

    def as_dict(self) -> dict:
        return {"path": self.path, "line": self.line, "field": self.field, "message": self.message, "level": self.level}


@dataclass
class Example:
    messages: list[dict]
    path: str
    line: int
    meta: dict = field(default_factory=dict)


def data_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file())
        if not files:
            raise UserError(f"{p}: folder holds no .jsonl or .json files")
        return files
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    if p.suffix not in SUFFIXES:
        raise UserError(f"{p}: unsupported file type {p.suffix or '(none)'}; expected .jsonl or .json")
    return [p]


def read_records(path: Path) -> Iterator[tuple[int, object | Issue]]:
    """(line, parsed JSON object) for each non-empty line; problems come back as Issues."""
    try:
        f = open(path, "rb")
    except OSError as e:
        yield 0, Issue(str(path), 0, "", f"cannot read file ({e.strerror})")
        return
    with f:
        if path.suffix == ".json":
            raw = f.read()
            try:
                data = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield _line_of(raw, e.start), Issue(str(path), _line_of(raw, e.start), "", f"not UTF-8 (byte {raw[e.start]:#04x})")
                return
            except json.JSONDecodeError as e:
                yield e.lineno, Issue(str(path), e.lineno, "", f"invalid JSON: {e.msg} (column {e.colno})")
                return
            if not isinstance(data, list):
                yield 1, Issue(str(path), 1, "", "a .json file must hold a list of examples")
                return
            for i, obj in enumerate(data, 1):
                yield i, obj  # for .json, "line" is the item number
            return
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, Issue(str(path), n, "", f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})")
                continue
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as e:
                yield n, Issue(str(path), n, "", f"invalid JSON: {e.msg} (column {e.colno})")


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def detect(obj: dict) -> str | None:
    if "messages" in obj:
        return "chat"
    if "conversations" in obj:
        return "sharegpt"
    if "chosen" in obj and "rejected" in obj:
        return "preference"
    if "prompt" in obj and "completion" in obj:
        return "prompt-completion"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    return None


SHAPE_KEYS = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "prompt-completion": ("prompt", "completion"),
    "alpaca": ("instruction", "input", "output", "system"),
    "preference": ("prompt", "chosen", "rejected"),
}


def normalize(obj: object) -> tuple[list[dict] | None, dict, list[tuple[str, str, str]]]:
    """-> (messages or None, metadata, [(level, field, message)])."""
    if not isinstance(obj, dict):
        return None, {}, [("error", "", f"expected a JSON object, got {type(obj).__name__}")]
    shape = detect(obj)
    if shape is None:
        return None, {}, [("error", "", "unknown shape: expected keys messages, prompt+completion, "
                           f"instruction+output or conversations; found {', '.join(sorted(obj)) or 'none'}")]
    meta = {k: v for k, v in obj.items() if k not in SHAPE_KEYS[shape]}
    problems: list[tuple[str, str, str]] = []
    if shape == "preference":
        return None, meta, [("error", "", "preference pair (prompt/chosen/rejected): only the preference trainer uses these")]
    if shape == "prompt-completion":
        msgs = [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
        names = ["prompt", "completion"]
    elif shape == "alpaca":
        inp = obj.get("input") or ""
        if not isinstance(inp, str):
            problems.append(("error", "input", f"expected a string, got {type(inp).__name__}"))
            inp = ""
        instruction = obj["instruction"]
        user = f"{instruction}\n\n{inp}" if inp and isinstance(instruction, str) else instruction
        msgs = ([{"role": "system", "content": obj["system"]}] if obj.get("system") else [])
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
        names = (["system"] if obj.get("system") else []) + ["instruction", "output"]
    else:
        key = "messages" if shape == "chat" else "conversations"
        raw = obj[key]
        if not isinstance(raw, list) or not raw:
            return None, meta, [("error", key, "expected a non-empty list of messages")]
        msgs, names = [], []
        for i, m in enumerate(raw):
            f = f"{key}[{i}]"
            if not isinstance(m, dict):
                problems.append(("error", f, f"expected an object, got {type(m).__name__}"))
                continue
            if shape == "chat":
                role, content = m.get("role"), m.get("content")
                extra = set(m) - {"role", "content", "name"}
                if "role" not in m:
                    problems.append(("error", f"{f}.role", "missing"))
                elif role not in ROLES:
                    problems.append(("error", f"{f}.role", f"unknown role {role!r}; expected system, user or assistant"))
            else:
                role, content = SHAREGPT_ROLES.get(m.get("from")), m.get("value")
                extra = set(m) - {"from", "value"}
                if role is None:
                    problems.append(("error", f"{f}.from", f"unknown speaker {m.get('from')!r}; expected human, gpt or system"))
            for k in sorted(extra):
                problems.append(("warning", f"{f}.{k}", "unknown key, ignored"))
            msgs.append({"role": role, "content": content})
            names.append(f"{f}.{'content' if shape == 'chat' else 'value'}")
    for m, name in zip(msgs, names):
        c = m["content"]
        if c is None:
            problems.append(("error", name, "missing"))
        elif not isinstance(c, str):
            problems.append(("error", name, f"expected a string, got {type(c).__name__}"))
        elif not c.strip():
            problems.append(("error", name, "empty"))
    problems += _role_order(msgs, "messages" if shape == "chat" else shape)
    if any(level == "error" for level, _, _ in problems):
        return None, meta, problems
    return msgs, meta, problems


def _role_order(msgs: list[dict], field: str) -> list[tuple[str, str, str]]:
    roles = [m["role"] for m in msgs if m.get("role") in ROLES]
    if len(roles) != len(msgs):
        return []  # already reported
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        return [("error", field, "a system message may only come first")]
    if "assistant" not in body:
        return [("error", field, "no assistant turn: nothing to learn or score")]
    for i, r in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if r != want:
            return [("error", field, f"wrong role order: turn {i + 1} is {r}, expected {want} (user and assistant alternate, user first)")]
    if body[-1] != "assistant":
        return [("warning", field, "ends with a user turn, which is not learned from")]
    return []


def load_examples(path: str | Path, what: str = "--data") -> list[Example]:
    """All examples of a file or folder; any error prints the full report and stops."""
    examples: list[Example] = []
    issues: list[Issue] = []
    for f in data_files(path):
        for line, obj in read_records(f):
            if isinstance(obj, Issue):
                issues.append(obj)
                continue
            msgs, meta, problems = normalize(obj)
            issues += [Issue(str(f), line, fld, msg, lvl) for lvl, fld, msg in problems if lvl == "error"]
            if msgs is not None:
                examples.append(Example(msgs, str(f), line, meta))
    if issues:
        import sys

        for i in issues[:20]:
            print(i, file=sys.stderr)
        more = f" (first 20 shown; run `tunesmith data check {path}` for all)" if len(issues) > 20 else ""
        raise UserError(f"{what} {path}: {len(issues)} problem(s){more}; fix them and run again")
    if not examples:
        raise UserError(f"{what} {path}: no examples found")
    return examples
