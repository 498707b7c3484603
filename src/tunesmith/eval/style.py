"""House-style format check from a YAML spec the user writes.

    required:  [{pattern: '^Meeting Summary:', name: heading}, ...]   # each must match
    forbidden: [{pattern: '\\bI\\b', name: third person}, ...]          # none may match
    max_words: 250

Patterns are Python regular expressions searched in the output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError

KEYS = {"required", "forbidden", "max_words"}


@dataclass
class Rule:
    name: str
    kind: str  # required | forbidden | max_words
    pattern: re.Pattern | None = None
    limit: int = 0

    def passes(self, text: str) -> bool:
        if self.kind == "required":
            return bool(self.pattern.search(text))
        if self.kind == "forbidden":
            return not self.pattern.search(text)
        return len(text.split()) <= self.limit


def load_style(path: str | Path) -> list[Rule]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--style {path}: no such file")
    try:
        spec = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--style {path}: invalid YAML ({e})") from None
    if not isinstance(spec, dict):
        raise UserError(f"--style {path}: expected a mapping with required / forbidden / max_words")
    unknown = set(spec) - KEYS
    if unknown:
        raise UserError(f"--style {path}: unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(KEYS))}")
    rules: list[Rule] = []
    for kind in ("required", "forbidden"):
        for i, item in enumerate(spec.get(kind) or []):
            if isinstance(item, str):
                item = {"pattern": item}
            if not isinstance(item, dict) or "pattern" not in item:
                raise UserError(f"--style {path}: {kind}[{i}]: expected a pattern (string) or {{pattern, name}}")
            try:
                rx = re.compile(item["pattern"])
            except re.error as e:
                raise UserError(f"--style {path}: {kind}[{i}].pattern: invalid regular expression ({e})") from None
            rules.append(Rule(item.get("name") or f"{kind} {item['pattern']}", kind, rx))
    if spec.get("max_words") is not None:
        rules.append(Rule(f"at most {spec['max_words']} words", "max_words", limit=int(spec["max_words"])))
    return rules


def check_style(rules: list[Rule], text: str) -> dict[str, bool]:
    return {r.name: r.passes(text) for r in rules}
