"""House-style format check from a YAML spec the user writes.

    required:  [{pattern: '^Meeting Summary:', name: heading}, ...]   # each must match
    forbidden: [{pattern: '\\bI\\b', name: third person}, ...]          # none may match
    max_words: 250                                                      # whitespace-separated words
    max_chars: 1500                                                     # characters
    json_schema: {type: object, required: [title]}                      # output is JSON and validates
    json_schema_file: schema.json                                       # same, schema from a file (path
                                                                        # relative to this spec)

Patterns are Python regular expressions searched in the output. The output must parse as JSON
as a whole (no code fences around it); `json_schema: {}` asks for any valid JSON. Schemas are
checked with the `jsonschema` package (any draft it knows; $schema picks one, else the latest).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError

KEYS = {"required", "forbidden", "max_words", "max_chars", "json_schema", "json_schema_file"}


@dataclass
class Rule:
    name: str
    kind: str  # required | forbidden | max_words | max_chars | json_schema
    pattern: re.Pattern | None = None
    limit: int = 0
    validator: object = None  # a jsonschema validator, for json_schema

    def passes(self, text: str) -> bool:
        if self.kind == "required":
            return bool(self.pattern.search(text))
        if self.kind == "forbidden":
            return not self.pattern.search(text)
        if self.kind == "max_chars":
            return len(text) <= self.limit
        if self.kind == "json_schema":
            try:
                doc = json.loads(text)
            except ValueError:
                return False
            return self.validator.is_valid(doc)
        return len(text.split()) <= self.limit


def _limit(path, spec: dict, key: str) -> int | None:
    v = spec.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise UserError(f"--style {path}: {key}: expected a positive whole number, got {v!r}")
    return v


def _schema_rule(path, spec: dict) -> Rule | None:
    if "json_schema" in spec and "json_schema_file" in spec:
        raise UserError(f"--style {path}: json_schema and json_schema_file: give one of them, not both")
    if "json_schema_file" in spec:
        key, f = "json_schema_file", spec["json_schema_file"]
        if not isinstance(f, str) or not f:
            raise UserError(f"--style {path}: json_schema_file: expected a path to a JSON file, got {f!r}")
        sf = Path(path).parent / f  # relative to the spec; an absolute path stays as it is
        try:
            schema = json.loads(sf.read_text())
        except OSError as e:
            raise UserError(f"--style {path}: json_schema_file: cannot read {sf} ({e.strerror})") from None
        except ValueError as e:
            raise UserError(f"--style {path}: json_schema_file: {sf} is not valid JSON ({e})") from None
        name = f"valid JSON matching {Path(f).name}"
    elif "json_schema" in spec:
        key, schema, name = "json_schema", spec["json_schema"], "valid JSON matching json_schema"
    else:
        return None
    if not isinstance(schema, (dict, bool)):
        raise UserError(
            f"--style {path}: {key}: expected a JSON Schema (a mapping), got {type(schema).__name__}"
        )
    try:
        from jsonschema import SchemaError
        from jsonschema.validators import validator_for
    except ImportError:
        raise UserError(
            f"--style {path}: {key}: checking JSON needs the jsonschema package: "
            "pip install 'tunesmith[eval]'"
        ) from None
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(x) for x in e.path) or "top level"
        raise UserError(f"--style {path}: {key}: not a valid JSON Schema at {where}: {e.message}") from None
    return Rule(name, "json_schema", validator=cls(schema))


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
        raise UserError(f"--style {path}: expected a mapping with {', '.join(sorted(KEYS))}")
    unknown = set(spec) - KEYS
    if unknown:
        raise UserError(
            f"--style {path}: unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(KEYS))}"
        )
    rules: list[Rule] = []
    for kind in ("required", "forbidden"):
        items = spec.get(kind) or []
        if not isinstance(items, list):
            raise UserError(
                f"--style {path}: {kind}: expected a list of patterns (strings or {{pattern, name}})"
            )
        for i, item in enumerate(items):
            if isinstance(item, str):
                item = {"pattern": item}
            if not isinstance(item, dict) or "pattern" not in item:
                raise UserError(
                    f"--style {path}: {kind}[{i}]: expected a pattern (string) or {{pattern, name}}"
                )
            try:
                rx = re.compile(item["pattern"])
            except (re.error, TypeError) as e:
                raise UserError(
                    f"--style {path}: {kind}[{i}].pattern: invalid regular expression ({e})"
                ) from None
            rules.append(Rule(item.get("name") or f"{kind} {item['pattern']}", kind, rx))
    for key, unit in (("max_words", "words"), ("max_chars", "characters")):
        n = _limit(path, spec, key)
        if n is not None:
            rules.append(Rule(f"at most {n} {unit}", key, limit=n))
    schema_rule = _schema_rule(path, spec)
    if schema_rule:
        rules.append(schema_rule)
    return rules


def check_style(rules: list[Rule], text: str) -> dict[str, bool]:
    return {r.name: r.passes(text) for r in rules}
