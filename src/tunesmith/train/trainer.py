"""Fine-tuning (LoRA and the other methods): setup -> fit -> validate, in one readable path.

The loop is our own rather than transformers.Trainer/TRL: it computes the output layer and
the cross-entropy only at answer positions (most positions are prompt, and the vocabulary
projection is a large share of a small model's FLOPs), and normalizes the loss over all
answer tokens of the optimizer step, so batch 8 == batch 4 x accumulation 2.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tunesmith.atomic import make_temp_dir, replace_dir, write_text
from tunesmith.chat import IGNORE, encode_chat, split_prompt
from tunesmith.data.formats import load_examples, locate_paths
from tunesmith.data.prepare import is_mix, load_training_mix
from tunesmith.errors import UserError
from tunesmith.faults import killpoint
from tunesmith.modeling import check_adapter_dir, default_dtype, generate, load_base
from tunesmith.scoring.metrics import scores
from tunesmith.train import attention, checkpoint, recompute, rundir
from tunesmith.train import distributed as dist
from tunesmith.train.config import ADAPTER_METHODS, TrainConfig
from tunesmith.train.loss import linear_cross_entropy_sum

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
    A short last step (fewer examples than --batch-size) stays last, as in a DataLoader.
    """
    rng = random.Random(cfg.seed * 1000 + epoch)
    idx = list(range(len(encoded)))
    rng.shuffle(idx)
    window = cfg.batch_size * 8
    ordered: list[int] = []
    for s in range(0, len(idx), window):
        ordered += sorted(idx[s : s + window], key=lambda i: len(encoded[i].input_ids))
    steps = [ordered[s : s + cfg.batch_size] for s in range(0, len(ordered), cfg.batch_size)]
    short = steps.pop() if steps and len(steps[-1]) < cfg.batch_size else None
    rng.shuffle(steps)
    if short:
        steps.append(short)
    budget = pass_budget(encoded, cfg)
    return [micro_batches(encoded, step, cfg, budget) for step in steps]


def pass_budget(encoded: list, cfg: TrainConfig) -> int:
    """token_budget, capped at the padded width of the longest example of `encoded` (so no pass holds more
    tokens than that example alone); 0 where passes hold a fixed number of examples."""
    if not token_budget(cfg) or not encoded:
        return 0
    return min(token_budget(cfg), padded_width(max(len(e.input_ids) for e in encoded), bucket_size(cfg)))


def micro_batches(encoded: list, idx: list[int], cfg: TrainConfig, budget: int) -> list[list[int]]:
    """Split one step's examples `idx` into forward passes: --micro-batch-size examples each, or with a
    `budget` (pass_budget) as many examples of similar length as fit in that many padded tokens."""
    if not budget:
        return [idx[m : m + cfg.micro_batch_size] for m in range(0, len(idx), cfg.micro_batch_size)]
    bucket = bucket_size(cfg)
    out: list[list[int]] = []
    width = 0
    for i in sorted(idx, key=lambda i: len(encoded[i].input_ids)):
        w = padded_width(len(encoded[i].input_ids), bucket)
        if out and max(width, w) * (len(out[-1]) + 1) <= budget:
            out[-1].append(i)
            width = max(width, w)
        else:
            out.append([i])
            width = w
    return out


def padded_width(n: int, bucket: int) -> int:
    """`n` tokens rounded up to a multiple of `bucket` (0: not rounded): a row's width in a batch."""
    return -(-n // bucket) * bucket if bucket else n


def collate(encoded: list, idx: list[int], pad_id: int, bucket: int = 0):
    """Right-padded ids, attention mask and labels of the examples `idx`.

    With `bucket`, the width is rounded up to a multiple of it and the mask is all ones: in a
    causal model no real token looks right, so right padding needs no mask (its positions are
    never targets), and the attention can take its unmasked fast path. Why round at all: on a
    CPU every new sequence length makes oneDNN build and cache new matmul kernels (with their
    own buffers) and fragments the heap; with every example a different length, bf16 training's
    peak RSS on the example data grew to ~3.4 GB where one sequence needs ~1.4 GB. Widths in
    steps of 64 measured 2.7 GB at the same speed (the padding's ~7 % more tokens cost about
    what the fewer distinct shapes save)."""
    import torch

    width = padded_width(max(len(encoded[i].input_ids) for i in idx), bucket)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    mask = torch.full((len(idx), width), 1 if bucket else 0, dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(encoded[i].input_ids)
        ids[r, :n] = torch.tensor(encoded[i].input_ids)
        labels[r, :n] = torch.tensor(encoded[i].labels)
        mask[r, :n] = 1
    return ids, mask, labels


# ---------------------------------------------------------------- loss


def _prompt_learning(model) -> bool:
    return getattr(model, "active_peft_config", None) is not None and model.active_peft_config.is_prompt_learning


def answer_logits(model, ids, mask, labels, project: bool = True):
    """Logits at the answer positions only (the output layer runs nowhere else), their target
    ids, and the [batch, length - 1] mask of where they are. With project=False: the hidden
    states at those positions instead of the logits."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    dev = next(inner.parameters()).device
    ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
    targets = labels[:, 1:]
    sel = targets != IGNORE
    if _prompt_learning(model):
        # prompt/prefix tuning add virtual tokens in PeftModel.forward: use it, keep the real positions
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1]:]
        return logits[:, :-1][sel].float(), targets[sel], sel
    hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][sel]
    if not project:
        return hidden, targets[sel], sel
    logits = inner.get_output_embeddings()(hidden).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = (logits / cap).tanh() * cap
    return logits, targets[sel], sel


def frozen_output_layer(model):
    """The output layer's weight when the loss can be computed block by block (loss.py): frozen, no bias,
    no logit softcapping, no virtual tokens; else None."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = inner.get_output_embeddings()
    if (_prompt_learning(model) or getattr(inner.config, "final_logit_softcapping", None)
            or type(out) is not torch.nn.Linear or out.bias is not None or out.weight.requires_grad):
        return None
    return out.weight


def answer_loss_sum(model, ids, mask, labels):
    """Sum of cross-entropy over answer tokens, and how many there are."""
    import torch.nn.functional as F

    weight = frozen_output_layer(model)
    if weight is not None:
        hidden, targets, sel = answer_logits(model, ids, mask, labels, project=False)
        return linear_cross_entropy_sum(hidden, weight, targets), int(sel.sum())
    logits, targets, sel = answer_logits(model, ids, mask, labels)
    return F.cross_entropy(logits, targets, reduction="sum"), int(sel.sum())


def n_answer_tokens(encoded, idx) -> int:
    # labels are shifted by one for prediction; the first token never is a target
    return sum(sum(1 for x in encoded[i].labels[1:] if x != IGNORE) for i in idx)


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


def setup_model(cfg: TrainConfig, trust_remote_code: bool = False):
    """The base model with the chosen method applied: what is trainable, and how."""
    import torch

    if cfg.method == "qlora":
        if not torch.cuda.is_available():
            raise UserError("--method qlora quantizes the base model to 4 bits with bitsandbytes, which needs a CUDA GPU; "
                            "on this machine use --method lora (the same adapter, on an unquantized base)")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("--method qlora needs bitsandbytes: pip install bitsandbytes")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    if autocast_device(cfg):  # trainable weights and the optimizer in fp32, the forward pass under bf16 autocast
        dtype = torch.bfloat16 if frozen_base_bf16(cfg) else torch.float32
    model, tok, model_dir = load_base(cfg.model, trust_remote_code=trust_remote_code, dtype=dtype,
                                      quantize_4bit=cfg.method == "qlora")
    if cpu_autocast(cfg):
        model.set_attn_implementation(attention.register())
    torch.manual_seed(cfg.seed)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method in ("full", "freeze"):
        if cfg.from_adapter:
            raise UserError(f"--from-adapter is for adapter methods; to continue a {cfg.method} run, pass its directory as --model")
        select_trainable(model, cfg)
    else:
        from peft import PeftModel, get_peft_model

        if cfg.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        elif cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        if cfg.from_adapter:
            src = check_adapter_dir(cfg.from_adapter)
            kind = json.loads((src / "adapter_config.json").read_text()).get("peft_type")
            want = peft_config(cfg).peft_type.value
            if kind != want:
                raise UserError(f"--from-adapter {src}: a {kind} adapter cannot continue as --method {cfg.method} ({want})")
            try:
                model = PeftModel.from_pretrained(model, str(src), is_trainable=True)
            except (RuntimeError, ValueError, KeyError) as e:
                raise UserError(f"--from-adapter {src}: does not fit model {cfg.model} ({str(e).splitlines()[0]})") from None
        else:
            try:
                model = get_peft_model(model, peft_config(cfg))
            except ValueError as e:
                raise UserError(f"--method {cfg.method}: {str(e).splitlines()[0]}") from None
    model.config.use_cache = False
    if cpu_autocast(cfg) and frozen_base_bf16(cfg):
        recompute.apply(model)
    return model, tok, model_dir


def autocast_device(cfg: TrainConfig) -> str | None:
    """Where the forward pass runs under bf16 autocast, or None. Under it the trainable weights, their
    gradients and AdamW stay fp32 (pure bf16 weights round most updates away), as HF Trainer's bf16=True.
    "cpu": --precision bf16 on a CPU, fast where it multiplies bf16 natively (AVX512-BF16, AMX).
    "cuda": bf16 on a GPU (--precision bf16, or auto on a GPU that has it). Not QLoRA: bitsandbytes
    computes in its own compute dtype."""
    import torch

    if not torch.cuda.is_available():
        return "cpu" if cfg.precision == "bf16" else None
    if cfg.method == "qlora":
        return None
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and default_dtype() == torch.bfloat16)
    return "cuda" if bf16 else None


def cpu_autocast(cfg: TrainConfig) -> bool:
    """bf16 training on a CPU, where attention, padding and norms take the CPU's fast, lean paths."""
    return autocast_device(cfg) == "cpu"


def bucket_size(cfg: TrainConfig) -> int:
    """Under CPU bf16, batches are padded to a multiple of 64 tokens (see collate)."""
    return 64 if cpu_autocast(cfg) else 0


# Under CPU bf16 a short sequence leaves the CPU idle: one LoRA pass of SmolLM2-135M ran 273 tokens/s at
# 128 tokens, 353 at 256, 381 at 448, but 4 × 128 tokens in one pass 432 and 2 × 256 420 (2-core EPYC,
# AVX512-BF16): oneDNN's bf16 matmuls want many rows, while attention's cost grows with each row's
# length. So auto micro-batches fill a pass with examples of similar length up to this many padded
# tokens. On DialogSum steps (64 examples, 260 tokens on average): one example per pass 303 tokens/s;
# budgets 512 / 768 / 1024 / 1536: 342 / 368 / 381 / 397. The budget is also capped at the longest
# example's padded width (pass_budget), so no pass holds more tokens than that example alone: on the
# example data (longest 645 tokens) a flat 1024 raised the peak RSS from 1,936 to 2,472 MiB, the cap
# (704) kept it at 1,971; on DialogSum (longest 856, budget 896) 2,041 → 2,412 MiB for 1.2× the speed.
TOKEN_BUDGET = 1024


def token_budget(cfg: TrainConfig) -> int:
    """Padded tokens per forward pass when --micro-batch-size is 0 (auto) under CPU bf16 (not FSDP, whose
    ranks must run as many passes), else 0: a fixed number of examples per pass."""
    return TOKEN_BUDGET if not cfg.micro_batch_size and cpu_autocast(cfg) and not cfg.fsdp else 0


def frozen_base_bf16(cfg: TrainConfig) -> bool:
    """Adapter methods under autocast keep the frozen base in bf16: half the memory, and no cast of
    every weight at every use. Not for full/freeze (their saved model would mix dtypes) nor FSDP (it
    shards a unit's parameters as one flat tensor of one dtype)."""
    return cfg.method in ("lora", "dora", "prompt-tuning", "prefix-tuning") and not cfg.fsdp


def amp(cfg: TrainConfig, model):
    """The forward pass's precision context: bf16 autocast where autocast_device says so, with PEFT's cast
    of each adapter layer's input to the adapter's fp32 switched off (autocast multiplies in bf16 anyway,
    the cast was a wasted copy, and its fp32 result was what autograd kept)."""
    import torch

    device = autocast_device(cfg)
    if device is None:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device, dtype=torch.bfloat16))
    stack.enter_context(disable_input_dtype_casting(model))
    return stack


def peft_config(cfg: TrainConfig):
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit

    if cfg.method == "prompt-tuning":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.RANDOM)
    if cfg.method == "prefix-tuning":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.virtual_tokens)
    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      use_dora=cfg.method == "dora", use_rslora=cfg.rslora, task_type="CAUSAL_LM")


def select_trainable(model, cfg: TrainConfig) -> None:
    """full: every weight. freeze: only the last N layers, or the named modules."""
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return
    names = [n.strip() for n in cfg.train_modules.split(",") if n.strip()]
    if not names:
        n_layers = model.config.num_hidden_layers
        names = [f"layers.{i}." for i in range(max(0, n_layers - cfg.freeze_layers), n_layers)]
    hit = 0
    for name, p in model.named_parameters():
        on = any(k in name for k in names)
        p.requires_grad_(on)
        hit += on
    if not hit:
        raise UserError(f"--train-modules {cfg.train_modules!r}: matches no parameter of this model "
                        f"(names look like {next(iter(dict(model.named_parameters())))})")


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
    progress = _Progress(total_steps, quiet or not lead, start=st["step"])
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


def tensorboard_writer(cfg: TrainConfig):
    """A SummaryWriter for --tensorboard DIR on rank 0, else None."""
    if not cfg.tensorboard or dist.world()[0] != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'tunesmith[tensorboard]'") from None
    return SummaryWriter(log_dir=cfg.tensorboard)


def tensorboard_add(tb, rec: dict) -> None:
    """Every number of a metrics.jsonl record, as a scalar at its step."""
    if tb is None:
        return
    for k, v in rec.items():
        if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
            tb.add_scalar(k, v, rec["step"])
    tb.flush()


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


class _Progress:
    """A progress bar with loss, tokens/s and ETA; plain lines when not on a terminal; silent with --quiet."""

    def __init__(self, total: int, quiet: bool, start: int = 0):
        self.quiet, self.total, self.t0, self.start = quiet, total, time.time(), start
        if quiet:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        if self.live:
            self.p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                              TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self.task = self.p.add_task("train", total=total, completed=start, info="")
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
            eta = el / max(1, step - self.start) * (self.total - step)
            self.console.print(f"step {step}/{self.total} {info} ETA {eta // 60:.0f}m{eta % 60:02.0f}s", highlight=False)

    def note(self, text):
        if not self.quiet:
            self.console.print(text, highlight=False)

    def close(self):
        if not self.quiet and self.live:
            self.p.stop()


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
