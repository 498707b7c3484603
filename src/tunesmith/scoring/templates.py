"""The templating of hosted graders: `{{ item.a.b[0] }}` and `{{ sample.output_text }}` filled in
from a data row and an answer (the guide's "JSON path like syntax"), and the `sample` namespace of an
answer. Shared by the graders that read text (scoring/hosted.py) and those that ask a model
(scoring/hosted_judge.py)."""

from __future__ import annotations

import json
import math
import re

from tunesmith.errors import UserError

_VAR = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(r"\.?([A-Za-z_][\w-]*)|\[(\d+)\]")


def number(v) -> bool:
    """A finite int or float (not a bool): what a grade must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class GraderError(UserError):
    pass


# ---------------------------------------------------------------- templates


def lookup(root: dict, path: str, where: str):
    """The value at `namespace.a.b[0]` in {"item": ..., "sample": ...}."""
    ns, _, rest = path.partition(".")
    if ns not in ("item", "sample") or not rest:
        raise GraderError(f"{where}: {{{{ {path} }}}}: a variable is item.NAME or sample.NAME")
    value, pos = root[ns], 0
    for m in _PATH.finditer(rest):
        if m.start() != pos:
            break
        pos = m.end()
        key = m.group(1) if m.group(1) is not None else int(m.group(2))
        ok = isinstance(value, dict) and key in value if isinstance(key, str) else (
            isinstance(value, list) and key < len(value))  # fmt: skip
        if not ok:
            raise GraderError(f"{where}: {{{{ {path} }}}}: {ns} has no {rest[: m.end()]!r}")
        value = value[key]
    if pos != len(rest):
        raise GraderError(f"{where}: {{{{ {path} }}}}: cannot read {rest[pos:]!r} (write a.b[0].c)")
    return value


def render(template, root: dict, where: str) -> str:
    """A template string with its variables filled in (objects and lists as JSON, numbers as text)."""
    if not isinstance(template, str):
        return str(template)

    def one(m):
        v = lookup(root, m.group(1), where)
        return v if isinstance(v, str) else json.dumps(v)

    return _VAR.sub(one, template)


def sample_of(text: str, finish: str = "stop") -> dict:
    """The `sample` namespace of one answer."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return {
        "output_text": text,
        "output_json": parsed if isinstance(parsed, dict) else {},
        "output_tools": [],
        "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}],
    }


def item_of(ex, reference: str) -> dict:
    """A hosted grader's `item`: the data row's fields, and `reference` (the row's reference answer)
    when the row has no field of that name and has an answer."""
    item = {"messages": ex.messages, **ex.meta}
    if reference:  # a prompt-only row has none
        item.setdefault("reference", reference)
    return item
