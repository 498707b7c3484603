"""Fine-tuning (LoRA and the other methods): setup -> fit -> validate, in one readable path.

The loop is our own rather than transformers.Trainer/TRL: it computes the output layer and
the cross-entropy only at answer positions (most positions are prompt, and the vocabulary
projection is a large share of a small model's FLOPs), and normalizes the loss over all
answer tokens of the optimizer step, so batch 8 == batch 4 x accumulation 2.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tunesmith.atomic import make_temp_dir, replace_dir, write_text
from tunesmith.chat import IGNORE, split_prompt
from tunesmith.data.formats import load_examples, locate_paths
from tunesmith.data.prepare import is_mix, load_training_mix
from tunesmith.errors import UserError
from tunesmith.faults import killpoint
from tunesmith.loading import generate
from tunesmith.scoring.metrics import scores
from tunesmith.train import checkpoint, rundir
from tunesmith.train import distributed as dist
from tunesmith.train.batching import batches, collate, encode_all, micro_batches, n_answer_tokens, pass_budget
from tunesmith.train.config import ADAPTER_METHODS, TrainConfig
from tunesmith.train.loss import answer_loss_sum
from tunesmith.train.precision import amp, bucket_size, token_budget
from tunesmith.train.progress import Progress, tensorboard_add, tensorboard_writer
from tunesmith.train.setup import setup_model

# ---------------------------------------------------------------- data


def load_data(cfg: TrainConfig):
    """Training and validation examples; a mix file (.yaml) combines several data sets by weight."""
    if is_mix(cfg.data):
        if not Path(cfg.data).is_file():
            raise UserError(f"--data {cfg.data}: no such file")
        train_ex, val_ex = load_training_mix(cfg.data, cfg.seed)
        if cfg.val:
            val_ex = load_examples(cfg.val, "--val")
        return train_ex, val_ex, cfg.data
    train_path, val_path = locate_paths(cfg.data, cfg.val)
    return load_examples(train_path, "--data"), (load_examples(val_path, "--val") if val_path else []), train_path


# ---------------------------------------------------------------- loss


def validate(model, encoded, cfg: TrainConfig, pad_id: int, sharded_loss=None) -> float:
    """Mean answer-token loss. Under FSDP pass the sharded loss module: the forward must go through it."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    rank, size = dist.world()
    mine = dist.shard(order, rank, size)  # each rank scores its share; the sums are combined
    groups = micro_batches(encoded, mine, cfg, pass_budget(encoded, cfg))
    if sharded_loss is not None:  # FSDP: each forward pass is collective, every rank runs as many (a spare one is not counted)
        groups += [[]] * (-(-len(dist.shard(order, 0, size)) // cfg.micro_batch_size) - len(groups))
    bucket = bucket_size(cfg)
    with torch.no_grad():
        for batch in groups:
            ids, mask, labels = collate(encoded, batch or order[:1], pad_id, bucket)
            with amp(cfg, model):
                if sharded_loss is not None:
                    loss, n = sharded_loss(ids, mask, labels), int((labels[:, 1:] != IGNORE).sum())
                else:
                    loss, n = answer_loss_sum(model, ids, mask, labels)
            if batch:
                total += float(loss)
                count += n
    model.train(was_training)
    total, count = dist.all_sum([total, count])
    return total / max(count, 1)


def validate_generation(model, tok, val_gen: tuple[list, list], cfg: TrainConfig) -> float:
    """--eval-metric: greedy answers for the validation prompts, scored against their references (0-100)."""
    import statistics

    prompts, refs = val_gen
    was_training, use_cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True
    try:
        outs = generate(model, tok, prompts, max_new_tokens=cfg.eval_max_new_tokens, batch_size=8)
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    return statistics.fmean(scores(o.text, r)[cfg.eval_metric] for o, r in zip(outs, refs))


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
    best: dict | None = None  # step, epoch and val_loss of the adapter that was saved
    early_stopped: bool = False
    val_loss_start: float | None = None  # before training


def lr_schedule(cfg: TrainConfig, total_steps: int):
    warmup = max(1, int(total_steps * cfg.warmup_ratio)) if cfg.warmup_ratio > 0 else 0

    def lr_at(step: int) -> float:  # multiplier of the peak learning rate
        if step < warmup:
            return (step + 1) / warmup
        prog = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.scheduler == "cosine":
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))
        return 1.0 - prog if cfg.scheduler == "linear" else 1.0

    return lr_at


def fit(model, tok, train_enc, val_enc, cfg: TrainConfig, work: Path, quiet: bool = False, resume: Path | None = None,
        val_gen: tuple[list, list] | None = None):
    """The training loop. Checkpoints go to work/checkpoints, the best adapter to work/best.
    With `val_gen` (prompts, references) each validation also generates and scores (--eval-metric);
    the best step is then the one with the highest score rather than the lowest loss."""
    import torch

    step_loss_fn = dist.wrap(model, answer_loss_sum, cfg.fsdp)  # before the optimizer: FSDP swaps the parameters
    sharded_loss = step_loss_fn if dist.sharded(model) else None
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for all parameters on a GPU (what TRL uses there); not for FSDP's sharded tensors
    fused = bool(params) and params[0].is_cuda and not cfg.fsdp
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg, total_steps))
    pad, bucket, budget = tok.pad_token_id, bucket_size(cfg), pass_budget(train_enc, cfg)
    st = {"step": 0, "epoch": 1, "step_in_epoch": 0, "tokens": 0, "answer_tokens": 0, "elapsed": 0.0, "val_s": 0.0, "val_start": None,
          "val_losses": [], "best": None, "bad": 0, "stopped": False, "last_loss": float("nan"), "metric_lines": 0}
    metrics_path = work / "metrics.jsonl"
    rank, world_size = dist.world()
    lead = rank == 0  # only rank 0 writes files and shows progress
    if resume is not None:
        st = checkpoint.load(resume, model, opt, sched)
        if lead:
            lines = metrics_path.read_text().splitlines(keepends=True)[: st["metric_lines"]] if metrics_path.exists() else []
            write_text(metrics_path, "".join(lines))  # drop what was logged after the checkpoint
    metrics = open(metrics_path if lead else os.devnull, "a" if resume is not None else "w")
    progress = Progress(total_steps, quiet or not lead, start=st["step"])
    t0 = time.time() - st["elapsed"]

    tb = tensorboard_writer(cfg)

    def log(rec: dict) -> None:
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        tensorboard_add(tb, rec)
        st["metric_lines"] += 1

    metric = f"val_{cfg.eval_metric}" if val_gen else None

    def run_validation() -> None:
        t = time.time()
        killpoint("validation")
        v = validate(model, val_enc, cfg, pad, sharded_loss)
        rec = {"step": st["step"], "epoch": st["epoch"], "val_loss": round(v, 6)}
        if metric:
            rec[metric] = round(validate_generation(model, tok, val_gen, cfg), 2)
        st["val_s"] += time.time() - t
        st["val_losses"].append(v)
        log(rec)
        best = st["best"]
        if best is None or (rec[metric] > best[metric] if metric else v < best["val_loss"]):
            st["best"], st["bad"] = {**rec, "val_loss": v}, 0
            save_adapter(model, tok, work / "best", cfg, write=lead)
            mark = " (best)"
        else:
            st["bad"] += 1
            mark = ""
            if cfg.patience and st["bad"] >= cfg.patience:
                st["stopped"] = True
                mark = f"; no better than step {st['best']['step']} for {st['bad']} validations: stopping early"
        score = f", {metric.replace('_', ' ')} {rec[metric]:.1f}" if metric else ""
        progress.note(f"step {st['step']} (epoch {st['epoch']}): train loss {st['last_loss']:.4f}, val loss {v:.4f}{score}{mark}")

    def save_checkpoint() -> None:
        st["elapsed"] = time.time() - t0
        checkpoint.save(work / "checkpoints" / f"{checkpoint.PREFIX}{st['step']:07d}", model, opt, sched, st, write=lead)
        if lead:
            checkpoint.prune(work / "checkpoints", cfg.keep_checkpoints)
        dist.barrier()

    if val_enc and resume is None:  # where we start from, so every run shows what training changed
        t = time.time()
        st["val_start"] = validate(model, val_enc, cfg, pad, sharded_loss)
        rec = {"step": 0, "epoch": 0, "val_loss": round(st["val_start"], 6)}
        if metric:
            rec[metric] = round(validate_generation(model, tok, val_gen, cfg), 2)
        st["val_s"] += time.time() - t
        log(rec)
        score = f", {metric.replace('_', ' ')} {rec[metric]:.1f}" if metric else ""
        progress.note(f"validation loss before training: {st['val_start']:.4f}{score}")
        progress.t0 = time.time()  # the ETA counts training steps only
    model.train()
    try:
        for epoch in range(st["epoch"], cfg.epochs + 1):
            # step_in_epoch > 0: a checkpoint from inside this epoch, whose end (validation, checkpoint) is still
            # to do, even when its last step was the run's last (a kill between that checkpoint and the validation)
            if (st["stopped"] or st["step"] >= total_steps) and st["step_in_epoch"] == 0:
                break
            st["epoch"] = epoch
            for k, micro in enumerate(batches(train_enc, cfg, epoch)):
                if st["stopped"] or st["step"] >= total_steps:
                    break
                if k < st["step_in_epoch"]:
                    continue  # done before the checkpoint we resumed from
                n_ans = sum(n_answer_tokens(train_enc, m) for m in micro)
                mine = dist.shard([i for m in micro for i in m], rank, world_size)
                weight = world_size / n_ans  # DDP averages gradients over ranks; we want the sum over the step
                if not mine:  # fewer examples than ranks: take part with a zero-weight example
                    mine, weight = micro[0][:1], 0.0
                local = micro_batches(train_enc, mine, cfg, budget)
                step_loss, tokens = 0.0, 0
                for j, m in enumerate(local):
                    ids, mask, labels = collate(train_enc, m, pad, bucket)
                    with dist.accumulating(step_loss_fn, last=j == len(local) - 1):
                        with amp(cfg, model):
                            loss = step_loss_fn(ids, mask, labels)
                        (loss * weight).backward()
                    step_loss += float(loss.detach()) / n_ans if weight else 0.0
                    tokens += sum(len(train_enc[i].input_ids) for i in m) if weight else 0
                step_loss, tokens = dist.all_sum([step_loss, tokens])
                st["tokens"] += int(tokens)
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                st["step"] += 1
                st["step_in_epoch"] = k + 1
                st["answer_tokens"] += n_ans
                st["last_loss"] = step_loss
                elapsed = time.time() - t0 - st["val_s"]  # training time only
                log({"step": st["step"], "epoch": epoch, "loss": round(step_loss, 6), "lr": sched.get_last_lr()[0],
                     "grad_norm": round(float(dist.full(norm)), 4), "tokens": st["tokens"], "tokens_per_s": round(st["tokens"] / elapsed, 1)})
                progress.update(st["step"], epoch, cfg.epochs, step_loss, st["tokens"] / elapsed)
                if val_enc and cfg.eval_every_steps and st["step"] % cfg.eval_every_steps == 0:
                    run_validation()
                if cfg.save_every and st["step"] % cfg.save_every == 0:
                    save_checkpoint()
            if val_enc and not (cfg.eval_every_steps and st["step"] % cfg.eval_every_steps == 0):
                run_validation()
            elif not val_enc:
                progress.note(f"epoch {epoch}/{cfg.epochs}: train loss {st['last_loss']:.4f}")
            st["epoch"], st["step_in_epoch"] = epoch + 1, 0  # the checkpoint resumes at the next epoch
            save_checkpoint()
    finally:
        progress.close()
        metrics.close()
        if tb is not None:
            tb.close()
    st["elapsed"] = time.time() - t0
    return st


def save_adapter(model, tok, where: Path, cfg: TrainConfig | None = None, write: bool = True) -> None:
    """The trainable part as a PEFT adapter directory (full/freeze: a model directory), written
    atomically. Under FSDP every rank calls this (the weights are gathered) and `write` says who writes."""
    state = None
    if dist.sharded(model):
        state = dist.full_state(model, trainable_only=cfg is None or cfg.method in ADAPTER_METHODS)
    if not write:
        return
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(where)
    try:
        model.save_pretrained(str(tmp), **({"state_dict": state} if state is not None else {}))
        tok.save_pretrained(str(tmp))
        replace_dir(tmp, where)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- run directory


def train(cfg: TrainConfig, *, overwrite: bool = False, quiet: bool = False, trust_remote_code: bool = False,
          resume: bool = False, allow_changed_data: bool = False, config_file: str | None = None) -> Result:
    import torch

    if not cfg.data:
        raise UserError("--data is required (a folder with train.jsonl and val.jsonl, or a file)")
    if not cfg.out:
        raise UserError("--out is required: the run directory to create")
    dist.init()
    lead = dist.world()[0] == 0
    if cfg.fsdp and dist.world()[1] == 1:
        raise UserError("--fsdp shards the model across processes, and this is one process: launch with "
                        "`torchrun --nproc_per_node N -m tunesmith.cli train ...` (N ≥ 2), or drop --fsdp")
    out, work = rundir.begin(cfg, overwrite=overwrite, resume=resume, config_file=config_file, lead=lead)
    ckpt = checkpoint.latest(work / "checkpoints") if resume else None
    if ckpt is not None:
        data_print = rundir.check_data(work, cfg, ckpt, allow_changed_data, write=lead)
    else:  # a new run, or one killed before its first checkpoint: (re)start it with its saved config
        data_print = rundir.fingerprint(cfg)
        if resume and not quiet:
            print(f"{work}: no checkpoint yet; starting the run over with its saved config", file=sys.stderr)
    rundir.check_disk(out, cfg)
    if cfg.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("--tensorboard needs the tensorboard package: pip install 'tunesmith[tensorboard]'")
    train_ex, val_ex, train_path = load_data(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tok, model_dir = setup_model(cfg, trust_remote_code)
    if not cfg.micro_batch_size and not token_budget(cfg):  # else 0 stays: passes of up to TOKEN_BUDGET tokens
        on_cpu = next(model.parameters()).device.type == "cpu"
        cfg.micro_batch_size = 1 if on_cpu else max(d for d in range(1, 5) if cfg.batch_size % d == 0)
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
        what = f"resuming from {ckpt.name}: " if ckpt else ""
        print(f"{what}training {cfg.method} on {len(train_enc)} examples ({len(val_enc)} validation), "
              f"{trainable:,} of {total:,} parameters trainable", file=sys.stderr)
    dist.barrier()  # every rank has checked --out before rank 0 creates the run directory
    if lead and ckpt is None:
        rundir.record(work, cfg, data_print)
    dist.barrier()
    val_gen = None
    if cfg.eval_metric:
        if not val_ex:
            raise UserError("--eval-metric needs validation examples: --val FILE, or val.jsonl beside the training data")
        kept = val_ex[: cfg.eval_limit] if cfg.eval_limit else val_ex
        val_gen = tuple(map(list, zip(*(split_prompt(ex.messages) for ex in kept))))
    st = fit(model, tok, train_enc, val_enc, cfg, work, quiet, resume=ckpt, val_gen=val_gen)
    best = st["best"]
    train_s = max(1e-9, st["elapsed"] - st["val_s"])  # tokens/s count training time, not validation
    result = Result(str(out), st["step"], st["last_loss"], st["val_losses"], round(st["tokens"] / train_s, 1),
                    round(st["answer_tokens"] / train_s, 1), round(st["elapsed"], 1), len(train_enc), len(dropped),
                    best, st["stopped"], st["val_start"])
    state = dist.full_state(model, cfg.method in ADAPTER_METHODS) if dist.sharded(model) else None  # FSDP: all ranks gather
    if not lead:
        dist.barrier()  # rank 0 writes the run directory
        return result
    if state is not None:
        model.save_pretrained(str(work), state_dict=state)
        if best is not None and best["step"] != st["step"]:  # the run's weights are the best step's, saved beside
            for f in [*(work / "best").glob("*.safetensors"), *(work / "best").glob("*.safetensors.index.json")]:
                shutil.copy2(f, work / f.name)
    elif best is not None and best["step"] != st["step"]:
        # the run's adapter is the best one by validation loss; load it back for the final save
        from safetensors.torch import load_file

        if cfg.method in ADAPTER_METHODS:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(str(work / "best" / "adapter_model.safetensors")))
        else:
            for f in sorted((work / "best").glob("*.safetensors")):
                model.load_state_dict(load_file(str(f)), strict=False)
    if state is None:
        model.save_pretrained(str(work))  # the whole run dir is renamed into place below, so no temp dir here
    tok.save_pretrained(str(work))
    rundir.finish(work, out, {"model": cfg.model, "model_dir": str(model_dir), "method": cfg.method,
                              "adapter": "best" if best else "last", "processes": dist.world()[1],
                              "engine": "fsdp" if state is not None else "ddp" if dist.world()[1] > 1 else "single",
                              "result": asdict(result)})
    dist.barrier()
    return result
