"""The plan in words: what `tunesmith plan` prints (its reasoning, line by line, and what would fit
instead), `--json`, and the line `train` prints before it loads the model, where a run predicted
not to fit stops (exit 4). The predictions themselves: plan.py."""

from __future__ import annotations

import sys

from tunesmith.errors import UserError, WillNotFit
from tunesmith.train import machine
from tunesmith.train.config import PREFERENCE_METHODS, TrainConfig, route
from tunesmith.train.plan import GIB, LAYER_PASS_S, Plan, efficiency, make_plan, suggestions


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,.0f}"


def render(plan: Plan) -> str:
    """The plan with its reasoning, as `tunesmith plan` prints it."""
    a, d, c, p = plan.arch, plan.data, plan.cfg, plan.parts
    where = "CPU" if plan.where == "RAM" else "GPU"
    flags = f" ({machine.flags_text()})" if where == "CPU" else ""
    layer_ms = LAYER_PASS_S["cpu" if where == "CPU" else "cuda"] * 1000
    per_token = p["activations"] / plan.pass_tokens
    tokens = sum(d.lengths)
    task = c.task != "generate"
    out = f"a {c.task} head of {a.vocab:,} outputs" if task else f"vocabulary {a.vocab:,}"
    share = "one label each" if task else f"{d.answers / max(tokens, 1):.0%} answers"
    lines = [
        f"plan: {plan.method} on {a.name}, {plan.precision} on the {where}{flags}",
        f"  model        {a.layers} layers, hidden {a.hidden}, MLP {a.intermediate}, {out}; "
        f"{_count(a.params)} parameters, {_count(a.trainable)} trainable",
        f"  weights      {_size(p['weights']):>9}   {_count(a.params)} parameters as the run holds them",
        f"  grads+AdamW  {_size(p['gradients and AdamW state']):>9}   "
        f"{_count(a.trainable)} trainable × 12 bytes",
        f"  activations  {_size(p['activations']):>9}   largest pass {plan.pass_tokens:,} tokens × "
        f"{per_token / 2**20:.2f} MiB per token (what the backward pass needs, and the heap around it)",
        f"  runtime      {_size(p['runtime']):>9}   "
        + ("Python, torch, transformers, the data" if where == "CPU" else "CUDA context (estimate)"),
    ]
    if p.get("AdamW step"):
        lines.append(
            f"  AdamW step   {_size(p['AdamW step']):>9}   its temporaries beyond the freed activations"
        )
    if p.get("while loading"):
        lines.append(
            f"  loading      {_size(p['while loading']):>9}   more while the file is read and converted"
        )
    lines += [
        f"  peak {plan.where} ≈ {_size(plan.peak)} of {_size(plan.available)} available "
        f"({_size(plan.total)} in all): " + ("fits" if plan.fits else "WILL NOT FIT"),
        f"  speed        matmul {plan.gflops:.0f} GFLOP/s ({plan.precision}, "
        + ("measured now" if plan.measured_now else "measured earlier on this machine")
        + f") × {efficiency(plan.precision, plan.cfg):.2f} efficiency / "
        f"{plan.flops_per_token / 1e9:.2f} GFLOP per token,",
        f"               {layer_ms:.0f} ms per layer per pass and the optimizer's steps ≈ "
        f"{plan.tokens_per_s:,.0f} tokens/s",
        f"  epoch        {len(d.lengths):,} examples, {tokens:,} tokens ({share}), "
        f"{plan.steps_per_epoch} steps of {c.batch_size} ≈ {_duration(plan.epoch_s)} "
        f"(with validation)",
        f"  in all       ≈ {_duration(plan.total_s)}"
        + (f" ({c.max_steps} steps)" if c.max_steps else f" ({c.epochs} epochs)"),
    ]
    if d.dropped:
        lines.append(
            f"  note         {d.dropped} examples longer than --max-length {c.max_length} are dropped"
        )
    why = route(c, len(d.lengths))
    if why:
        lines.append(f"  route        {why}")
    return "\n".join(lines)


def summary(plan: Plan) -> str:
    """One line, as `train` prints it before loading the model."""
    return (
        f"plan: peak {plan.where} ≈ {_size(plan.peak)} of {_size(plan.available)} available; ≈ "
        f"{plan.tokens_per_s:,.0f} tokens/s, {_duration(plan.epoch_s)} per epoch, {_duration(plan.total_s)} "
        "in all (`tunesmith plan` shows the reasoning)"
    )


def render_suggestions(plan: Plan, options: list[tuple[str, Plan]]) -> str:
    need = plan.peak - plan.resident - plan.available
    lines = [
        f"{plan.where.capitalize()} is short by ≈ {_size(need)} for this run. What would fit instead:"
        if not plan.fits
        else "Other settings:"
    ]
    for label, p in options:
        mark = "fits" if p.fits else "does not fit"
        drop = (
            f", drops {p.data.dropped - plan.data.dropped} examples"
            if p.data.dropped > plan.data.dropped
            else ""
        )
        lines.append(
            f"  {label:<32} peak ≈ {_size(p.peak)}, ≈ {_duration(p.epoch_s)} per epoch ({mark}{drop})"
        )
    if not any(p.fits for _, p in options):
        lines.append("  nothing here fits: a machine with more memory, or a smaller model")
    return "\n".join(lines)


def as_dict(plan: Plan, options: list[tuple[str, Plan]]) -> dict:
    """`plan --json`: the figures, bytes and seconds."""

    def one(p: Plan) -> dict:
        return {
            "fits": p.fits,
            "peak_bytes": p.peak,
            "parts_bytes": p.parts,
            "available_bytes": p.available,
            "total_bytes": p.total,
            "memory": p.where,
            "precision": p.precision,
            "largest_pass_tokens": p.pass_tokens,
            "tokens_per_s": round(p.tokens_per_s, 1),
            "steps_per_epoch": p.steps_per_epoch,
            "epoch_s": p.epoch_s,
            "total_s": p.total_s,
            "matmul_gflops": round(p.gflops, 1),
            "flops_per_token": p.flops_per_token,
            "examples": len(p.data.lengths),
            "tokens": sum(p.data.lengths),
            "dropped": p.data.dropped,
            "parameters": p.arch.params,
            "trainable": p.arch.trainable,
            "route": route(p.cfg, len(p.data.lengths)),
        }

    return {**one(plan), "suggestions": [{"change": label, **one(p)} for label, p in options]}


def before_training(
    cfg: TrainConfig, *, quiet: bool, fit_check: bool, trust_remote_code: bool
) -> Plan | None:
    """`train`'s first words: the plan in one line. A run predicted not to fit stops here, before the model
    is loaded, with the plan and what would fit (WillNotFit, exit 4) unless fit_check is off. The plan is
    advice: where it cannot be made (a model it cannot build on the meta device), training goes on."""
    if cfg.method in PREFERENCE_METHODS or cfg.method == "qlora" and machine.device() == "cpu":
        return None  # not modelled; QLoRA on a CPU is refused with its reason when the model is set up
    try:
        p = make_plan(cfg, trust_remote_code)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- advice must never stop a run that would work
        if not quiet:
            print(f"plan: not available for this model ({type(e).__name__}: {str(e)[:120]})", file=sys.stderr)
        return None
    if not quiet:
        print(summary(p), file=sys.stderr)
    if not p.fits and fit_check:
        print(render(p), file=sys.stderr)
        print(render_suggestions(p, suggestions(p, trust_remote_code)), file=sys.stderr)
        raise WillNotFit(
            f"the plan predicts a peak of {_size(p.peak)} {p.where} where {_size(p.available)} is available; "
            "choose a setting above, or pass --no-fit-check to train anyway"
        )
    return p
