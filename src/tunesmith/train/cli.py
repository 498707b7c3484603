"""`tunesmith train`: parse the flags into a TrainConfig, train (trainer.py), say what came out."""

from __future__ import annotations

import json
from dataclasses import asdict

from tunesmith.errors import UserError
from tunesmith.train import distributed as dist
from tunesmith.train import plan, plan_text, rundir
from tunesmith.train.config import TrainConfig, resolve_config, to_yaml
from tunesmith.train.preference import PrefResult
from tunesmith.train.sft import Result
from tunesmith.train.trainer import train


def cli_train(args) -> int:
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
    cfg = resolve_config(args)
    if not cfg.data:
        raise UserError("--data is required: the plan counts the tokens of the run's examples")
    p = plan.make_plan(cfg, trust_remote_code=args.trust_remote_code)
    options = plan.suggestions(p, args.trust_remote_code) if not p.fits or args.suggest else []
    if args.json:
        print(json.dumps(plan_text.as_dict(p, options), indent=2))
    else:
        print(plan_text.render(p))
        if options:
            print(plan_text.render_suggestions(p, options))
    return 0 if p.fits else plan.EXIT_WILL_NOT_FIT
