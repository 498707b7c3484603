"""The search space of a sweep, as a person writes it: `--space "lr=1e-4..3e-3:log, lora_r=8|16|32,
epochs=1..4"` (or the same as a YAML mapping: `lr: 1e-4..3e-3:log`, `lora_r: [8, 16, 32]`).

`A..B` is a range (whole numbers when both ends are, else real numbers; `:log` samples it on a log
scale, what a learning rate wants), `a|b|c` a choice. Every name is a `tunesmith train` setting
(`lora-r` and `lora_r` alike), checked before any trial runs, so a typo is one line, not a failed
study an hour later. Each parameter becomes one Optuna `suggest_*` call.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.train.config import TrainConfig

SETTINGS = {f.name: f.type for f in fields(TrainConfig)}
NOT_SEARCHED = {"data", "val", "out", "model", "from_adapter", "method", "tensorboard", "style", "rubric"}


@dataclass(frozen=True)
class Param:
    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.choices:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} {self.low}..{self.high}" + (" (log scale)" if self.log else "")


def _number(text: str, where: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: {text!r} is not a number") from None


def _value(text: str):
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_one(name: str, spec, where: str) -> Param:
    name = name.strip().replace("-", "_")
    if name not in SETTINGS or name in NOT_SEARCHED:
        known = ", ".join(sorted(set(SETTINGS) - NOT_SEARCHED))
        raise UserError(f"{where}: {name!r} is not a training setting a sweep can vary (one of: {known})")
    if isinstance(spec, list):
        if len(spec) < 2:
            raise UserError(f"{where} {name}: a choice needs at least two values")
        return Param(name, choices=tuple(spec))
    spec = str(spec).strip()
    if "|" in spec:
        values = tuple(_value(v) for v in spec.split("|") if v.strip())
        if len(values) < 2:
            raise UserError(f"{where} {name}={spec}: a choice needs at least two values (a|b)")
        return Param(name, choices=values)
    body, _, scale = spec.partition(":")
    if scale not in ("", "log"):
        raise UserError(f"{where} {name}={spec}: the only scale is ':log'")
    lo, sep, hi = body.partition("..")
    if not sep:
        raise UserError(f"{where} {name}={spec}: write a range as LOW..HIGH or a choice as a|b|c")
    low, high = _number(lo.strip(), f"{where} {name}"), _number(hi.strip(), f"{where} {name}")
    if not low < high:
        raise UserError(f"{where} {name}={spec}: LOW must be below HIGH")
    if scale == "log" and low <= 0:
        raise UserError(f"{where} {name}={spec}: a log scale needs LOW > 0")
    if SETTINGS[name] in (int, "int") and not (isinstance(low, int) and isinstance(high, int)):
        raise UserError(f"{where} {name}={spec}: {name} is a whole number; give whole-number ends")
    return Param(name, low, high, scale == "log")


def parse_space(text: str) -> list[Param]:
    """--space as a string, or the path of a YAML file with a mapping."""
    if text.strip().endswith((".yaml", ".yml")):
        import yaml

        path = Path(text.strip())
        if not path.is_file():
            raise UserError(f"--space {path}: no such file")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict) or not data:
            raise UserError(f"--space {path}: expected a mapping of settings to ranges (lr: 1e-4..3e-3:log)")
        params = [parse_one(str(k), v, f"--space {path}") for k, v in data.items()]
    else:
        params = []
        for part in text.split(","):
            if not part.strip():
                continue
            name, sep, spec = part.partition("=")
            if not sep:
                raise UserError(f"--space: {part.strip()!r} is not NAME=RANGE or NAME=a|b|c")
            params.append(parse_one(name, spec, "--space"))
    if not params:
        raise UserError('--space: nothing to search; e.g. --space "lr=1e-4..3e-3:log, lora_r=8|16|32"')
    names = [p.name for p in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--space: {twice[0]} is given twice")
    return params
