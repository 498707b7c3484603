"""`tunesmith train` and `tunesmith plan`: parse the flags into a TrainConfig, train (trainer.py) or
predict (plan.py), say what came out.

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from tunesmith.errors import UserError
from tunesmith.flags import add_model, add_registry, add_track
from tunesmith.train.config import TrainConfig, add_config_flags, resolve_config, to_yaml

if TYPE_CHECKING:  # annotations only: the handlers import these when they run
    from tunesmith.train.preference import PrefResult
    from tunesmith.train.sft import Result


def add_parsers(sub) -> None:
    """The parsers of `train` and `plan` (declarations only)."""
    p = sub.add_parser("train", help="fine-tune with LoRA; writes a PEFT adapter into --out")
    add_model(p)
    p.add_argument("--data", help="folder with train.jsonl and val.jsonl, or a train file")
    p.add_argument("--val", help="validation file (default: val.jsonl beside the training data)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--config", help="YAML file with any of these flags (command line wins)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run tunesmith wrote in --out (only once the new one is done)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="with --resume: continue although the data files changed since the run started (recorded in the "
        "run)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.add_argument(
        "--no-fit-check",
        action="store_true",
        help="train although the plan predicts more memory than there is (exit 4 otherwise)",
    )
    add_registry(p)
    add_track(p)
    add_config_flags(p)
    p.set_defaults(handler=cli_train)
    p = sub.add_parser(
        "plan",
        help="will a training run fit, and how long will it take: predicted before loading the model",
    )
    add_model(p)
    p.add_argument("--data", help="folder with train.jsonl and val.jsonl, or a train file")
    p.add_argument("--val", help="validation file (default: val.jsonl beside the training data)")
    p.add_argument("--config", help="YAML file with any of the train flags (command line wins)")
    p.add_argument("--out", help=argparse.SUPPRESS)  # train's flag, accepted so a train line can be reused
    p.add_argument("--suggest", action="store_true", help="also list other settings when the run fits")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_config_flags(p)
    p.set_defaults(handler=cli_plan)


def cli_train(args) -> int:
    from tunesmith.train import distributed as dist
    from tunesmith.train import rundir
    from tunesmith.train.classify import ClassifyResult
    from tunesmith.train.preference import PrefResult
    from tunesmith.train.trainer import train

    if args.resume:
        given = [
            f"--{k.replace('_', '-')}"
            for k, v in vars(args).items()
            if v not in (None, False)
            and k
            not in (
                "resume",
                "quiet",
                "json",
                "handler",
                "command",
                "trust_remote_code",
                "allow_changed_data",
                "registry",
                "track",
                "no_fit_check",
            )
        ]
        if given:
            raise UserError(f"--resume continues with the run's saved config; drop {', '.join(given)}")
        args.config = str(rundir.saved_config(args.resume))
    elif args.allow_changed_data:
        raise UserError(
            "--allow-changed-data goes with --resume: it continues an interrupted run on data that changed"
        )
    cfg = resolve_config(args)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    r = train(
        cfg,
        overwrite=args.overwrite,
        quiet=args.quiet or args.json,
        trust_remote_code=args.trust_remote_code,
        resume=bool(args.resume),
        allow_changed_data=args.allow_changed_data,
        config_file=None if args.resume else args.config,
        registry_path=args.registry,
        track=args.track,
        fit_check=not args.no_fit_check,
    )
    if dist.world()[0] != 0:
        return 0  # rank 0 reports for everyone
    if args.json:
        print(json.dumps(asdict(r), indent=2))
    else:
        if isinstance(r, ClassifyResult):
            print(_classify_summary(r))
        else:
            print(_preference_summary(cfg, r) if isinstance(r, PrefResult) else _summary(r))
    return 0


def _summary(r: Result) -> str:
    val = f", val loss {r.val_losses[-1]:.4f}" if r.val_losses else ""
    key = next((k for k in (r.best or {}) if k.startswith("val_") and k != "val_loss"), None)
    how = (
        f"{key.replace('_', ' ')} {r.best[key]:.1f}"
        if key
        else f"val loss {r.best['val_loss']:.4f}"
        if r.best
        else ""
    )
    best = f"; adapter from step {r.best['step']} (best {how})" if r.best else ""
    return (
        f"saved adapter to {r.run_dir} ({r.steps} steps, train loss {r.train_loss:.4f}{val}, "
        f"{r.tokens_per_s:,.0f} tokens/s, {r.wall_s:.0f}s{best})"
    )


def _classify_summary(r) -> str:
    from tunesmith.train.classify import GOAL

    key = GOAL[r.task][0]
    name = key[4:].replace("_", " ")
    moved = f", {name} {r.val_start[key]:.4g} -> {r.val[-1][key]:.4g}" if r.val and key in r.val_start else ""
    best = f"; weights from step {r.best['step']} (best {name} {r.best[key]:.4g})" if r.best else ""
    return (
        f"saved {r.task} run to {r.run_dir} ({r.steps} steps, train loss {r.train_loss:.4f}{moved}, "
        f"{r.tokens_per_s:,.0f} tokens/s, {r.wall_s:.0f}s{best})"
    )


def _preference_summary(cfg: TrainConfig, r: PrefResult) -> str:
    last = r.val[-1] if r.val else {}
    if cfg.method == "dpo" and last:
        what = (
            f"held-out reward accuracy {last['val_accuracy']:.0%}, chosen preferred (avg log-prob) "
            f"{r.val_start.get('logp_accuracy', 0):.0%} -> {last['logp_accuracy']:.0%}"
        )
    elif last:
        what = (
            f"held-out reward {r.val_start.get('val_reward', float('nan')):.3f} -> {last['val_reward']:.3f}"
        )
    else:
        what = f"loss {r.train_loss:.4f}"
    speed = f"{r.tokens_per_s:,.0f} tokens/s"
    return f"saved adapter to {r.run_dir} ({cfg.method}, {r.steps} steps, {what}, {speed}, {r.wall_s:.0f}s)"


def cli_plan(args) -> int:
    """`tunesmith plan`: the predicted peak memory and time of `train` with the same flags, and what would
    fit instead when it does not (exit 4)."""
    from tunesmith.train import plan, plan_text

    cfg = resolve_config(args)
    if not cfg.data and not cfg.documents:
        raise UserError(
            "--data (or --documents) is required: the plan counts the tokens of the run's examples"
        )
    p = plan.make_plan(cfg, trust_remote_code=args.trust_remote_code)
    options = plan.suggestions(p, args.trust_remote_code) if not p.fits or args.suggest else []
    if args.json:
        print(json.dumps(plan_text.as_dict(p, options), indent=2))
    else:
        print(plan_text.render(p))
        if options:
            print(plan_text.render_suggestions(p, options))
    return 0 if p.fits else plan.EXIT_WILL_NOT_FIT
