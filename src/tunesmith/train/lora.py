"""LoRA fine-tuning: setup -> fit -> validate, in one readable path.

The loop is our own rather than transformers.Trainer/TRL: it computes the output layer and
the cross-entropy only at answer positions (most positions are prompt, and the vocabulary
projection is a large share of a small model's FLOPs), and normalizes the loss over all
answer tokens of the optimizer step, so batch 8 == batch 4 x accumulation 2.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tunesmith.chat import IGNORE, encode_chat
from tunesmith.data.formats import load_examples
from tunesmith.errors import UserError
from tunesmith.modeling import RUN_INFO
from tunesmith.atomic import make_temp_dir, replace_dir
from tunesmith.train.config import TrainConfig, resolve_config, to_yaml

RUN_MARKERS = ("adapter_config.json", "config.yaml", RUN_INFO)


# ---------------------------------------------------------------- data


def locate_paths(data: str, val: str | None) -> tuple[Path, Path | None]:
    """--data DIR (train.jsonl + val.jsonl) or FILE, and an optional --val FILE."""
    d = Path(data)
    if d.is_dir():
        train = d / "train.jsonl"
        if not train.is_file():
            raise UserError(f"--data {d}: folder has no train.jsonl (expected train.jsonl and val.jsonl)")
        v = Path(val) if val else next((d / n for n in ("val.jsonl", "validation.jsonl") if (d / n).is_file()), None)
    else:
        if not d.exists():
            raise UserError(f"--data {d}: no such file or directory")
        train, v = d, Path(val) if val else None
    if v is not None and not v.exists():
        raise UserError(f"--val {v}: no such file")
    return train, v


def load_data(cfg: TrainConfig):
    """Training and validation examples; a mix file (.yaml) combines several data sets by weight."""
    from tunesmith.data.prepare import is_mix, load_training_mix

    if is_mix(cfg.data):
        if not Path(cfg.data).is_file():
            raise UserError(f"--data {cfg.data}: no such file")
        train_ex, val_ex = load_training_mix(cfg.data, cfg.seed)
        if cfg.val:
            val_ex = load_examples(cfg.val, "--val")
        return train_ex, val_ex, cfg.data
    train_path, val_path = locate_paths(cfg.data, cfg.val)
    return load_examples(train_path, "--data"), (load_examples(val_path, "--val") if val_path else []), train_path


def encode_all(tokenizer, examples, cfg: TrainConfig) -> tuple[list, list[str]]:
    kept, dropped = [], []
    for ex in examples:
        enc = encode_chat(tokenizer, ex.messages, cfg.train_on)
        if len(enc.input_ids) > cfg.max_length:
            dropped.append(f"{ex.path}:{ex.line}: {len(enc.input_ids)} tokens > --max-length {cfg.max_length}, dropped")
        else:
            kept.append(enc)
    return kept, dropped


def batches(encoded: list, cfg: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """Optimizer steps, each a list of micro-batches of example indices.

    Length-grouped: shuffle, then sort within windows of 8 steps' worth of examples, so a
    micro-batch holds examples of similar length (little padding) while order stays random.
    """
    rng = random.Random(cfg.seed * 1000 + epoch)
    idx = list(range(len(encoded)))
    rng.shuffle(idx)
    window = cfg.batch_size * 8
    ordered: list[int] = []
    for s in range(0, len(idx), window):
        ordered += sorted(idx[s : s + window], key=lambda i: len(encoded[i].input_ids))
    steps = [ordered[s : s + cfg.batch_size] for s in range(0, len(ordered), cfg.batch_size)]
    rng.shuffle(steps)
    return [[step[m : m + cfg.micro_batch_size] for m in range(0, len(step), cfg.micro_batch_size)] for step in steps]


def collate(encoded: list, idx: list[int], pad_id: int):
    import torch

    width = max(len(encoded[i].input_ids) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(encoded[i].input_ids)
        ids[r, :n] = torch.tensor(encoded[i].input_ids)
        labels[r, :n] = torch.tensor(encoded[i].labels)
        mask[r, :n] = 1
    return ids, mask, labels


# ---------------------------------------------------------------- loss


def answer_loss_sum(model, ids, mask, labels):
    """Sum of cross-entropy over answer tokens; logits computed only where a label exists."""
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    dev = next(inner.parameters()).device
    ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
    hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    sel = targets != IGNORE
    h = hidden[:, :-1][sel]
    logits = inner.get_output_embeddings()(h).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = (logits / cap).tanh() * cap
    return F.cross_entropy(logits, targets[sel], reduction="sum"), int(sel.sum())


def n_answer_tokens(encoded, idx) -> int:
    # labels are shifted by one for prediction; the first token never is a target
    return sum(sum(1 for x in encoded[i].labels[1:] if x != IGNORE) for i in idx)


def validate(model, encoded, cfg: TrainConfig, pad_id: int) -> float:
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    with torch.no_grad():
        for s in range(0, len(order), cfg.micro_batch_size):
            loss, n = answer_loss_sum(model, *collate(encoded, order[s : s + cfg.micro_batch_size], pad_id))
            total += float(loss)
            count += n
    model.train(was_training)
    return total / max(count, 1)


# ---------------------------------------------------------------- setup / fit


@dataclass
class Result:
    run_dir: str
    steps: int
    train_loss: float
    val_losses: list[float]
    tokens_per_s: float
    answer_tokens_per_s: float
    wall_s: float
    examples: int
    dropped: int


def setup_model(cfg: TrainConfig, trust_remote_code: bool = False):
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.modeling import load_base

    model, tok, model_dir = load_base(cfg.model, trust_remote_code=trust_remote_code)
    torch.manual_seed(cfg.seed)
    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise UserError(f"--lora-targets {cfg.lora_targets!r}: {str(e).splitlines()[0]}") from None
    model.config.use_cache = False
    return model, tok, model_dir


def fit(model, tok, train_enc, val_enc, cfg: TrainConfig, run_tmp: Path, quiet: bool = False):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total_steps * cfg.warmup_ratio)) if cfg.warmup_ratio > 0 else 0

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 % of peak
        if step < warmup:
            return (step + 1) / warmup
        prog = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    pad = tok.pad_token_id
    metrics = open(run_tmp / "metrics.jsonl", "w")
    progress = _Progress(total_steps, quiet)
    step, seen_tokens, seen_answer, t0 = 0, 0, 0, time.time()
    val_losses: list[float] = []
    last_loss = float("nan")
    model.train()
    try:
        for epoch in range(1, cfg.epochs + 1):
            for micro in batches(train_enc, cfg, epoch):
                n_ans = sum(n_answer_tokens(train_enc, m) for m in micro)
                step_loss = 0.0
                for m in micro:
                    ids, mask, labels = collate(train_enc, m, pad)
                    loss, _ = answer_loss_sum(model, ids, mask, labels)
                    (loss / n_ans).backward()
                    step_loss += float(loss.detach()) / n_ans
                    seen_tokens += int(mask.sum())
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                seen_answer += n_ans
                last_loss = step_loss
                elapsed = time.time() - t0
                rec = {"step": step, "epoch": epoch, "loss": round(step_loss, 6), "lr": sched.get_last_lr()[0],
                       "tokens": seen_tokens, "tokens_per_s": round(seen_tokens / elapsed, 1)}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                progress.update(step, epoch, cfg.epochs, step_loss, seen_tokens / elapsed)
            if val_enc:
                v = validate(model, val_enc, cfg, pad)
                val_losses.append(v)
                metrics.write(json.dumps({"step": step, "epoch": epoch, "val_loss": round(v, 6)}) + "\n")
                metrics.flush()
                progress.note(f"epoch {epoch}/{cfg.epochs}: train loss {last_loss:.4f}, val loss {v:.4f}")
            else:
                progress.note(f"epoch {epoch}/{cfg.epochs}: train loss {last_loss:.4f}")
    finally:
        progress.close()
        metrics.close()
    wall = time.time() - t0
    return step, last_loss, val_losses, seen_tokens / wall, seen_answer / wall, wall


class _Progress:
    """A progress bar with loss, tokens/s and ETA; plain lines when not on a terminal; silent with --quiet."""

    def __init__(self, total: int, quiet: bool):
        self.quiet, self.total, self.t0 = quiet, total, time.time()
        if quiet:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        if self.live:
            self.p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                              TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self.task = self.p.add_task("train", total=total, info="")
            self.p.start()
        self.every = max(1, total // 10)

    def update(self, step, epoch, epochs, loss, tps):
        if self.quiet:
            return
        info = f"epoch {epoch}/{epochs} loss {loss:.4f} {tps:,.0f} tok/s"
        if self.live:
            self.p.update(self.task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            el = time.time() - self.t0
            eta = el / step * (self.total - step)
            self.console.print(f"step {step}/{self.total} {info} ETA {eta // 60:.0f}m{eta % 60:02.0f}s", highlight=False)

    def note(self, text):
        if not self.quiet:
            self.console.print(text, highlight=False)

    def close(self):
        if not self.quiet and self.live:
            self.p.stop()


# ---------------------------------------------------------------- run directory


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any((out / m).exists() for m in RUN_MARKERS) and not overwrite:
        raise UserError(f"--out {out}: already holds a run; choose a new --out, or pass --overwrite "
                        "(the old run is replaced only once the new one has finished)")
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise UserError(f"--out {out}: cannot write in {parent}")


def train(cfg: TrainConfig, *, overwrite: bool = False, quiet: bool = False, trust_remote_code: bool = False) -> Result:
    import torch

    if not cfg.data:
        raise UserError("--data is required (a folder with train.jsonl and val.jsonl, or a file)")
    if not cfg.out:
        raise UserError("--out is required: the run directory to create")
    out = Path(cfg.out)
    check_out_dir(out, overwrite)
    train_ex, val_ex, train_path = load_data(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tok, model_dir = setup_model(cfg, trust_remote_code)
    train_enc, dropped = encode_all(tok, train_ex, cfg)
    val_enc, val_dropped = encode_all(tok, val_ex, cfg)
    for d in dropped + val_dropped:
        print(d, file=sys.stderr)
    if not train_enc:
        raise UserError(f"--data {train_path}: every example is longer than --max-length {cfg.max_length}; raise it")
    ctx = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(e.input_ids) for e in train_enc + val_enc)
    if ctx and longest > ctx:
        raise UserError(f"--data {train_path}: an example has {longest} tokens, more than the model's context "
                        f"({ctx}); lower --max-length to {ctx} or shorten the examples")
    if not quiet:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(f"training {cfg.method} on {len(train_enc)} examples ({len(val_enc)} validation), "
              f"{trainable:,} of {total:,} parameters trainable", file=sys.stderr)
    tmp = make_temp_dir(out)
    try:
        steps, loss, vals, tps, atps, wall = fit(model, tok, train_enc, val_enc, cfg, tmp, quiet)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "config.yaml").write_text(to_yaml(cfg))
        result = Result(str(out), steps, loss, vals, round(tps, 1), round(atps, 1), round(wall, 1),
                        len(train_enc), len(dropped))
        (tmp / RUN_INFO).write_text(json.dumps({"model": cfg.model, "model_dir": str(model_dir), "method": cfg.method,
                                                "result": asdict(result)}, indent=2))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def cli_train(args) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    r = train(cfg, overwrite=args.overwrite, quiet=args.quiet or args.json, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(asdict(r), indent=2))
    else:
        val = f", val loss {r.val_losses[-1]:.4f}" if r.val_losses else ""
        print(f"saved adapter to {r.run_dir} ({r.steps} steps, train loss {r.train_loss:.4f}{val}, "
              f"{r.tokens_per_s:,.0f} tokens/s, {r.wall_s:.0f}s)")
    return 0
