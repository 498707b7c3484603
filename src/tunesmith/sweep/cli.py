"""`tunesmith sweep`: read the flags, run the study, write the best config as a YAML `train --config`
takes, and rank the trials."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import yaml

from tunesmith.errors import UserError
from tunesmith.files.atomic import write_text
from tunesmith.sweep.curve import curve, parse_fractions
from tunesmith.sweep.report import render
from tunesmith.sweep.run import SweepSpec, params_text, run_sweep
from tunesmith.sweep.space import parse_space
from tunesmith.train.config import resolve_config

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str | None) -> float | None:
    """--time 90m / 2h / 3600s / 3600 as seconds."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--time {text!r}: a duration such as 90m, 2h or 3600s")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def best_config(spec: SweepSpec, params: dict) -> str:
    """The base settings with the best trial's, as YAML for `tunesmith train --config` (without --out)."""
    cfg = dataclasses.asdict(dataclasses.replace(spec.base, **params))
    cfg.pop("out", None)
    return yaml.safe_dump(cfg, sort_keys=False)


def cli_sweep(args) -> int:
    if importlib.util.find_spec("optuna") is None:
        raise UserError("sweep needs Optuna: pip install 'tunesmith[sweep]'")
    if args.trials < 1:
        raise UserError("--trials must be at least 1")
    space = parse_space(args.space)
    base = resolve_config(args)
    spec = SweepSpec(
        base=base,
        space=space,
        out=Path(args.out),
        trials=args.trials,
        time_s=seconds(args.time),
        metric=args.metric,
        direction=args.direction or "",
        pruner=args.pruner,
        storage=args.storage,
        study=args.study,
        resume=args.resume,
        registry=args.registry,
        seed=base.seed,
        workers=args.workers,
    )
    study = run_sweep(spec)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not finished:
        raise UserError(f"sweep {study.study_name}: no trial finished (all pruned or failed); widen --space")
    ranked = sorted(finished, key=lambda t: t.value, reverse=spec.maximize)
    best = ranked[0]
    write_text(spec.out / "best.yaml", best_config(spec, best.params))
    write_text(spec.out / "report.html", render(study, spec, ranked))
    print("ranking:")
    for i, t in enumerate(ranked[:10], 1):
        print(f"  {i:>2}. trial {t.number}: {spec.key} {t.value:.4f}  ({params_text(t.params)})")
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    print(
        f"best: trial {best.number}, {spec.key} {best.value:.4f}, in {best.user_attrs.get('out')}; "
        f"{pruned} pruned; its settings in {spec.out / 'best.yaml'} (`tunesmith train --config` takes it), "
        f"the plots in {spec.out / 'report.html'}"
    )
    return 0


def cli_curve(args) -> int:
    base = resolve_config(args)
    if not base.data:
        raise UserError("curve: --data is required")
    say = (lambda line: None) if args.json else print
    fractions = parse_fractions(args.fractions)
    result = curve(
        base, Path(args.out), fractions, args.test, args.metric, args.max_new_tokens, args.registry, say=say
    )
    if args.json:
        points = [{k: v for k, v in p.items() if k != "scores"} for p in result["points"]]
        print(json.dumps({**result, "points": points}, indent=2))
    else:
        print(result["sentence"])
        print(f"plot: {Path(args.out) / 'report.html'}")
    return 0
