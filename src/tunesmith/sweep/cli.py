"""`tunesmith sweep` and `tunesmith curve`: read the flags, run the study (or the nested subsets), write
the best config as a YAML `train --config` takes, and rank the trials (or draw the curve).

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tunesmith.errors import UserError
from tunesmith.flags import add_model, add_registry
from tunesmith.train.config import add_config_flags, resolve_config

if TYPE_CHECKING:  # annotations only: the handlers import these when they run
    from tunesmith.sweep.run import SweepSpec


def add_parsers(sub) -> None:
    """The parsers of `sweep` and `curve` (declarations only)."""
    p = sub.add_parser("sweep", help="search training settings with Optuna; every trial a registered run")
    add_model(p)
    p.add_argument("--data", help="folder with train.jsonl and val.jsonl, or a train file (with --val)")
    p.add_argument("--val", help="validation file (default: val.jsonl beside the training data)")
    p.add_argument(
        "--out", required=True, help="the sweep's folder: its study, one folder per trial, best.yaml"
    )
    p.add_argument("--config", help="YAML file with the settings every trial starts from (flags win)")
    p.add_argument(
        "--space", required=True, help='what to search: "lr=1e-4..3e-3:log, lora_r=8|16|32" or a YAML file'
    )
    p.add_argument(
        "--trials", type=int, default=20, help="trials in all, counting finished ones (default 20)"
    )
    p.add_argument("--time", help="stop starting trials after this long: 90m, 2h, 3600s")
    p.add_argument(
        "--metric",
        default="val_loss",
        help="val_loss (default) or a generation metric on the validation set (rougeL)",
    )
    p.add_argument(
        "--direction", choices=["minimize", "maximize"], help="default: minimize a loss, maximize a metric"
    )
    p.add_argument(
        "--pruner",
        default="median",
        choices=["median", "halving", "none"],
        help="stop poor trials early (default median)",
    )
    p.add_argument(
        "--storage",
        help="an Optuna storage URL shared by workers or machines (default: a journal file in --out)",
    )
    p.add_argument("--study", help="the study's name (default: the --out folder's name)")
    p.add_argument(
        "--resume", action="store_true", help="continue the study in --out: finished trials are kept"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="processes taking trials from the study at once (default 1)"
    )
    add_registry(p)
    add_config_flags(p)
    p.set_defaults(handler=cli_sweep)
    p = sub.add_parser(
        "curve", help="would more data help? train on nested subsets, measure each on one held-out set"
    )
    add_model(p)
    p.add_argument("--data", help="folder with train.jsonl and val.jsonl, or a .jsonl train file")
    p.add_argument("--val", help="validation file (default: val.jsonl beside the training data)")
    p.add_argument("--out", required=True, help="folder for the subsets, one run per point, report.html")
    p.add_argument("--config", help="YAML file with the training settings (flags win)")
    p.add_argument("--fractions", default="0.25,0.5,1", help="subset sizes as fractions (default 0.25,0.5,1)")
    p.add_argument(
        "--test", help="the held-out file every point is measured on (default: the validation file)"
    )
    p.add_argument(
        "--metric",
        help="the metric to plot (default rougeL; for --task: accuracy, exact_match, or mae / squared_error)",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest generated answer (default 256)")
    p.add_argument("--json", action="store_true", help="print the points and the sentence as JSON")
    add_registry(p)
    add_config_flags(p)
    p.set_defaults(handler=cli_curve)


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
    from tunesmith.files.atomic import write_text
    from tunesmith.sweep.report import render
    from tunesmith.sweep.run import SweepSpec, params_text, run_sweep
    from tunesmith.sweep.space import parse_space

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
    from tunesmith.sweep.curve import curve, parse_fractions

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
