"""Preference and reinforcement fine-tuning: DPO from preference pairs, GRPO with graders.

Both train a LoRA adapter (on the base, or continuing an SFT adapter with --from-adapter) and
write the same run directory as `--method lora`, so eval, generate, merge, export and serve
take it as it is.

Our own loops rather than TRL's DPOTrainer/GRPOTrainer, for the same reason as the SFT loop
(see trainer.py): the output layer and log-softmax run only at answer positions, and the
pieces (model setup, adapters, run directory) are the ones every other method uses. And:
- DPO's reference model is the starting point and never changes, so its log-probabilities of
  every pair are computed once before training: no second model in memory and one forward
  pass per pair per step instead of two.
- GRPO's reference (for the KL term) is the same model with the adapter switched off when
  training starts from the base, or a second, frozen copy of the starting adapter (a few MB)
  when it continues an SFT adapter; the base weights exist once.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.atomic import write_text
from tunesmith.chat import IGNORE, Encoded, encode_chat, prompt_ids, split_prompt, stop_token_ids
from tunesmith.data.formats import load_examples, locate_paths
from tunesmith.errors import UserError
from tunesmith.loading import generate, generate_ids
from tunesmith.train import checkpoint, rundir
from tunesmith.train.batching import collate
from tunesmith.train.graders import grade, parse_graders
from tunesmith.train.loss import answer_logits
from tunesmith.train.precision import amp
from tunesmith.train.progress import tensorboard_add, tensorboard_writer
from tunesmith.train.setup import setup_model
from tunesmith.train.trainer import lr_schedule, save_adapter

# ---------------------------------------------------------------- log-probabilities


def token_logps(model, ids, mask, labels):
    """Log-probability of every answer token, and the row each belongs to (1-D tensors).
    The output layer runs only at answer positions, as in the SFT loss."""
    import torch

    logits, targets, sel = answer_logits(model, ids, mask, labels)
    lp = torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    rows = torch.arange(sel.shape[0], device=sel.device).unsqueeze(1).expand_as(sel)[sel]
    return lp, rows


def sequence_logps(model, encs: list[Encoded], pad_id: int):
    """Sum of answer-token log-probabilities of each encoded sequence (a tensor, one per sequence)."""
    import torch

    ids, mask, labels = collate(encs, list(range(len(encs))), pad_id)
    lp, rows = token_logps(model, ids, mask, labels)
    return torch.zeros(len(encs), device=lp.device, dtype=lp.dtype).index_add(0, rows, lp)


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta: float):
    """Direct Preference Optimization (Rafailov et al. 2023), per pair:
    -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))). Also returns the implicit rewards
    beta * (pi - ref) of chosen and rejected."""
    import torch.nn.functional as F

    r_c = beta * (pi_chosen - ref_chosen)
    r_r = beta * (pi_rejected - ref_rejected)
    return -F.logsigmoid(r_c - r_r), r_c.detach(), r_r.detach()


def group_advantages(rewards, eps: float = 1e-4):
    """GRPO: each completion's reward relative to the others sampled for the same prompt,
    (r - mean) / (std + eps) within the group; a group where every reward is equal gets 0.
    `rewards` has shape [prompts, group]."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


# ---------------------------------------------------------------- shared run plumbing


@dataclass
class PrefResult:
    run_dir: str
    method: str
    steps: int
    train_loss: float
    tokens_per_s: float
    wall_s: float
    examples: int
    val_start: dict = field(default_factory=dict)  # held-out metrics before training
    val: list[dict] = field(default_factory=list)  # after each epoch
    best: dict | None = None


class _Log:
    """metrics.jsonl (and --tensorboard), and progress lines on stderr unless quiet."""

    def __init__(self, path: Path, quiet: bool, cfg):
        self.path, self.quiet, self.tb, self.lines = path, quiet, tensorboard_writer(cfg), 0
        self.f = open(path, "a")

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        self.lines += 1
        tensorboard_add(self.tb, rec)

    def keep(self, n: int) -> None:
        """Resuming: keep the first n lines (what was logged up to the checkpoint)."""
        self.f.close()
        write_text(self.path, "".join(self.path.read_text().splitlines(keepends=True)[:n]))
        self.f, self.lines = open(self.path, "a"), n

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


def _load(cfg, kind: str):
    train_path, val_path = locate_paths(cfg.data, cfg.val)
    train = load_examples(train_path, "--data", kind=None)
    val = load_examples(val_path, "--val", kind=None) if val_path else []
    for ex in train + val:
        if (ex.kind == "preference") != (kind == "preference"):
            want = ("preference pairs {\"prompt\", \"chosen\", \"rejected\"}" if kind == "preference"
                    else "prompts with a reference answer (chat or prompt/completion), not preference pairs")
            raise UserError(f"{ex.path}:{ex.line}: --method {cfg.method} trains on {want}")
    held_out = not val
    if held_out:  # hold out pairs/prompts to measure on, seeded and reported
        rng = random.Random(cfg.seed)
        order = list(range(len(train)))
        rng.shuffle(order)
        k = max(1, len(train) // 10) if len(train) > 1 else 0
        val = [train[i] for i in sorted(order[:k])]
        train = [train[i] for i in sorted(order[k:])]
    return train, val, train_path, held_out


class _Optim:
    """AdamW over the trainable parameters with the SFT loop's schedule; step() clips and updates."""

    def __init__(self, model, cfg, n_items: int):
        import torch


        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_epoch = math.ceil(n_items / cfg.batch_size)
        self.total = min(cfg.max_steps, per_epoch * cfg.epochs) if cfg.max_steps else per_epoch * cfg.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_schedule(cfg, self.total))
        self.clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")

    def step(self) -> float:
        import torch

        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]


def _schedule(n: int, cfg, total: int) -> list[tuple[int, list[list[int]]]]:
    """(epoch, its steps' item indices): items shuffled per epoch (seeded), cut at `total` steps."""
    rng, plan, left = random.Random(cfg.seed), [], total
    for epoch in range(1, cfg.epochs + 1):
        order = list(range(n))
        rng.shuffle(order)
        steps = [order[s : s + cfg.batch_size] for s in range(0, n, cfg.batch_size)][:left]
        if not steps:
            break
        plan.append((epoch, steps))
        left -= len(steps)
    return plan


class _Checkpoints:
    """A preference run's checkpoints, as SFT writes them (train/checkpoint.py: safetensors, atomic,
    RNG states): after every epoch and every --save-every steps. `state` is the loop's progress."""

    def __init__(self, cfg, work: Path, model, optim: _Optim, log: _Log):
        self.cfg, self.root, self.model, self.optim, self.log = cfg, work / "checkpoints", model, optim, log

    def resume(self, fresh: dict) -> tuple[dict, bool]:
        found = checkpoint.latest(self.root)
        if found is None:
            self.log.keep(0)  # a run killed before its first checkpoint starts over
            return fresh, False
        state = checkpoint.load(found, self.model, self.optim.opt, self.optim.sched)
        self.log.keep(state["metric_lines"])
        self.log.say(f"resuming from {found.name}")
        return state, True

    def save(self, state: dict, t0: float) -> None:
        state["metric_lines"], state["elapsed"] = self.log.lines, time.time() - t0
        checkpoint.save(self.root / f"{checkpoint.PREFIX}{state['step']:07d}", self.model, self.optim.opt,
                        self.optim.sched, state)
        checkpoint.prune(self.root, self.cfg.keep_checkpoints)


def _fresh(**more) -> dict:
    """A preference loop's progress at the start: what a checkpoint saves and a resume restores."""
    return {"step": 0, "epoch": 1, "k": 0, "tokens": 0, "t_work": 0.0, "last_loss": float("nan"), "vals": [],
            "best": None, "start": {}, "elapsed": 0.0, **more}


def _steps(plan, st: dict):
    """The plan's (epoch, k, item indices) not yet done, then None at each epoch's end."""
    for epoch, steps in plan:
        if epoch < st["epoch"]:
            continue
        for k, idx in enumerate(steps):
            if epoch > st["epoch"] or k >= st["k"]:
                yield epoch, k, idx
        yield epoch, None, None


def _open_log(cfg, work: Path, quiet: bool, held_out: bool, n_held: int, n_all: int, unit: str) -> _Log:
    """metrics.jsonl in the run's work dir; say where the held-out items came from."""
    log = _Log(work / "metrics.jsonl", quiet, cfg)
    if held_out:
        log.say(f"no validation file: holding out {n_held} of {n_all} {unit} (seed {cfg.seed}) to measure on")
    return log


def _finish(cfg, model, tok, work: Path, out: Path, model_dir, result: PrefResult, best_dir: Path | None) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if best_dir is not None and best_dir.is_dir():
        set_peft_model_state_dict(model, load_file(str(best_dir / "adapter_model.safetensors")))
    model.save_pretrained(str(work))
    tok.save_pretrained(str(work))
    shutil.rmtree(work / "best", ignore_errors=True)
    rundir.finish(work, out, {"model": cfg.model, "model_dir": str(model_dir), "method": cfg.method,
                              "from_adapter": cfg.from_adapter or None, "adapter": "best" if best_dir is not None else "last",
                              "result": asdict(result)})


def _save_best(model, tok, work: Path) -> Path:
    save_adapter(model, tok, work / "best")
    return work / "best"


# ---------------------------------------------------------------- DPO


@dataclass
class Pair:
    chosen: Encoded
    rejected: Encoded
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0


def encode_pairs(tok, examples, max_length: int) -> tuple[list[Pair], list[str]]:
    pairs, dropped = [], []
    for ex in examples:
        rejected = ex.messages[:-1] + [{"role": "assistant", "content": ex.rejected}]
        c, r = encode_chat(tok, ex.messages, "last"), encode_chat(tok, rejected, "last")
        n = max(len(c.input_ids), len(r.input_ids))
        if n > max_length:
            dropped.append(f"{ex.path}:{ex.line}: {n} tokens > --max-length {max_length}, dropped")
        else:
            pairs.append(Pair(c, r))
    return pairs, dropped


def pair_logps(model, pairs: list[Pair], pad_id: int, cfg, chunk: int = 4):
    """Summed answer log-probabilities of every pair's chosen and rejected answer (no gradients)."""
    import torch

    was = model.training
    model.eval()
    chosen, rejected = [], []
    with torch.no_grad(), amp(cfg, model):
        for s in range(0, len(pairs), chunk):
            part = pairs[s : s + chunk]
            lp = sequence_logps(model, [p.chosen for p in part] + [p.rejected for p in part], pad_id)
            chosen.append(lp[: len(part)])
            rejected.append(lp[len(part):])
    model.train(was)
    return torch.cat(chosen), torch.cat(rejected)


def dpo_eval(model, pairs: list[Pair], cfg, pad_id: int) -> dict:
    """Held-out pairs: DPO loss, reward accuracy (chosen's implicit reward above rejected's), mean
    margin, and a reference-free accuracy: the chosen answer has the higher average log-probability
    per token (measurable before training, when the rewards are all 0)."""
    import torch

    c, r = pair_logps(model, pairs, pad_id, cfg)
    ref_c = torch.tensor([p.ref_chosen for p in pairs], device=c.device)
    ref_r = torch.tensor([p.ref_rejected for p in pairs], device=c.device)
    loss, rc, rr = dpo_loss(c, r, ref_c, ref_r, cfg.dpo_beta)
    n_c = torch.tensor([max(p.chosen.n_answer, 1) for p in pairs], device=c.device)
    n_r = torch.tensor([max(p.rejected.n_answer, 1) for p in pairs], device=c.device)
    return {"val_loss": round(float(loss.mean()), 6), "val_accuracy": round(float((rc > rr).float().mean()), 4),
            "val_margin": round(float((rc - rr).mean()), 6), "logp_accuracy": round(float((c / n_c > r / n_r).float().mean()), 4)}


def train_dpo(cfg, *, out: Path, work: Path, quiet: bool, trust_remote_code: bool) -> PrefResult:
    import torch

    train_ex, val_ex, train_path, held_out = _load(cfg, "preference")
    model, tok, model_dir = setup_model(cfg, trust_remote_code)
    pairs, dropped = encode_pairs(tok, train_ex, cfg.max_length)
    val_pairs, vdropped = encode_pairs(tok, val_ex, cfg.max_length)
    for d in dropped + vdropped:
        print(d, file=sys.stderr)
    if not pairs:
        raise UserError(f"--data {train_path}: every pair is longer than --max-length {cfg.max_length}; raise it")
    pad = tok.pad_token_id
    log = _open_log(cfg, work, quiet, held_out, len(val_pairs), len(train_ex) + len(val_ex), "pairs")
    log.say(f"dpo on {len(pairs)} pairs ({len(val_pairs)} held out), beta {cfg.dpo_beta}; "
            f"reference: {'the --from-adapter adapter' if cfg.from_adapter else 'the base model'} (log-probs computed once)")

    optim = _Optim(model, cfg, len(pairs))
    total = optim.total
    ck = _Checkpoints(cfg, work, model, optim, log)
    st, resumed = ck.resume(_fresh(ref=[]))
    t0 = time.time() - st["elapsed"]
    if not resumed:
        # the reference is where training starts: score every pair once, before any update
        c, r = pair_logps(model, pairs + val_pairs, pad, cfg)
        st["ref"] = [[a, b] for a, b in zip(c.tolist(), r.tolist())]
    for p, (lc, lr) in zip(pairs + val_pairs, st["ref"]):
        p.ref_chosen, p.ref_rejected = lc, lr
    if not resumed and val_pairs:
        st["start"] = dpo_eval(model, val_pairs, cfg, pad)
        log.write({"step": 0, "epoch": 0, **st["start"]})
        log.say(f"held-out before training: chosen preferred (avg log-prob) {st['start']['logp_accuracy']:.0%}")

    mb = cfg.micro_batch_size or 1
    for epoch, k, idx in _steps(_schedule(len(pairs), cfg, total), st):
        if idx is None:  # the epoch's end
            if val_pairs:
                v = {"step": st["step"], "epoch": epoch, **dpo_eval(model, val_pairs, cfg, pad)}
                st["vals"].append(v)
                mark = ""
                if st["best"] is None or v["val_loss"] < st["best"]["val_loss"]:
                    st["best"], mark = v, " (best)"
                    _save_best(model, tok, work)
                log.write(v)
                log.say(f"epoch {epoch}: held-out dpo loss {v['val_loss']:.4f}, reward accuracy {v['val_accuracy']:.0%}, "
                        f"margin {v['val_margin']:+.3f}, chosen preferred (avg log-prob) {v['logp_accuracy']:.0%}{mark}")
            st["epoch"], st["k"] = epoch + 1, 0
            ck.save(st, t0)
            continue
        t = time.time()
        loss_sum = acc = margin = 0.0
        for m in range(0, len(idx), mb):
            chunk = [pairs[i] for i in idx[m : m + mb]]
            encs = [p.chosen for p in chunk] + [p.rejected for p in chunk]
            with amp(cfg, model):
                lp = sequence_logps(model, encs, pad)
            n = len(chunk)
            ref_c = torch.tensor([p.ref_chosen for p in chunk], device=lp.device)
            ref_r = torch.tensor([p.ref_rejected for p in chunk], device=lp.device)
            l, rc, rr = dpo_loss(lp[:n], lp[n:], ref_c, ref_r, cfg.dpo_beta)
            (l.sum() / len(idx)).backward()  # the mean over the step's pairs, whatever the micro-batch
            loss_sum += float(l.detach().sum())
            acc += float((rc > rr).float().sum())
            margin += float((rc - rr).sum())
            st["tokens"] += sum(len(e.input_ids) for e in encs)
        norm = optim.step()
        st["step"], st["k"] = st["step"] + 1, k + 1
        st["t_work"] += time.time() - t
        st["last_loss"] = loss_sum / len(idx)
        speed = st["tokens"] / st["t_work"]
        log.write({"step": st["step"], "epoch": epoch, "loss": round(st["last_loss"], 6),
                   "reward_accuracy": round(acc / len(idx), 4), "reward_margin": round(margin / len(idx), 6),
                   "lr": optim.lr, "grad_norm": round(norm, 4), "tokens": st["tokens"], "tokens_per_s": round(speed, 1)})
        log.say(f"step {st['step']}/{total}: dpo loss {st['last_loss']:.4f}, reward accuracy {acc / len(idx):.0%}, "
                f"margin {margin / len(idx):+.3f}, {speed:.0f} tokens/s")
        if cfg.save_every and st["step"] % cfg.save_every == 0:
            ck.save(st, t0)
    return _end(cfg, "dpo", model, tok, work, out, model_dir, st, t0, len(pairs), log)


# ---------------------------------------------------------------- GRPO


@contextlib.contextmanager
def reference_of(model, has_ref_adapter: bool):
    """Run the reference: the frozen starting adapter, or the base with the adapter switched off."""
    if not has_ref_adapter:
        with model.disable_adapter():
            yield
        return
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.base_model.set_adapter("reference")
    try:
        yield
    finally:
        model.base_model.set_adapter("default")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)


def _completion_enc(prompt: list[int], new: list[int], stopped: bool, stop_id: int | None) -> Encoded:
    answer = new + ([stop_id] if stopped and stop_id is not None else [])
    return Encoded(prompt + answer, [IGNORE] * len(prompt) + answer)


def sample(model, tok, prompts_ids: list[list[int]], cfg, seed: int) -> list[tuple[list[int], bool]]:
    was = model.training
    model.eval()
    model.config.use_cache = True
    try:
        out = generate_ids(model, prompts_ids, pad_id=tok.pad_token_id, stop_ids=stop_token_ids(tok),
                           max_new_tokens=cfg.grpo_max_new_tokens, temperature=cfg.grpo_temperature, seed=seed)
    finally:
        model.config.use_cache = False
        model.train(was)
    return out


def grpo_eval(model, tok, val, graders, cfg) -> dict:
    """Greedy answers to the held-out prompts, graded: the mean reward and each grader's mean."""

    was = model.training
    model.eval()
    model.config.use_cache = True
    try:
        prompts, refs = zip(*val)
        outs = generate(model, tok, list(prompts), max_new_tokens=cfg.grpo_max_new_tokens, batch_size=8)
    finally:
        model.config.use_cache = False
        model.train(was)
    rewards, means = grade(graders, list(prompts), [o.text for o in outs], list(refs))
    return {"val_reward": round(sum(rewards) / len(rewards), 4), **{f"val_{k}": round(v, 4) for k, v in means.items()}}


def train_grpo(cfg, *, out: Path, work: Path, quiet: bool, trust_remote_code: bool) -> PrefResult:
    import torch

    graders = parse_graders(cfg.graders, style=cfg.style, rubric=cfg.rubric, judge_default=cfg.model,
                            trust_remote_code=trust_remote_code)
    train_ex, val_ex, train_path, held_out = _load(cfg, "prompts")
    model, tok, model_dir = setup_model(cfg, trust_remote_code)
    has_ref = bool(cfg.from_adapter)
    if has_ref:  # the starting adapter, frozen, as the KL reference (adapter weights only: MBs)
        model.load_adapter(str(Path(cfg.from_adapter)), adapter_name="reference", is_trainable=False)
        model.base_model.set_adapter("default")
    train = [split_prompt(ex.messages) for ex in train_ex]
    val = [split_prompt(ex.messages) for ex in val_ex][: cfg.eval_limit or None]
    stop_id = (stop_token_ids(tok) or [None])[0]
    pad = tok.pad_token_id
    log = _open_log(cfg, work, quiet, held_out, len(val), len(train_ex) + len(val_ex), "prompts")
    log.say(f"grpo on {len(train)} prompts, {cfg.grpo_group} samples each, graders "
            f"{', '.join(f'{g.name}*{g.weight:g}' for g in graders)}, KL weight {cfg.grpo_beta}")
    optim = _Optim(model, cfg, len(train))
    total = optim.total
    ck = _Checkpoints(cfg, work, model, optim, log)
    st, resumed = ck.resume(_fresh())
    t0 = time.time() - st["elapsed"]
    if not resumed and val:
        st["start"] = start = grpo_eval(model, tok, val, graders, cfg)
        log.write({"step": 0, "epoch": 0, **start})
        log.say(f"held-out before training: reward {start['val_reward']:.3f} "
                + ", ".join(f"{k[4:]} {v:.3f}" for k, v in start.items() if k != "val_reward"))

    mb = cfg.micro_batch_size or 1
    g = cfg.grpo_group
    for epoch, k, idx in _steps(_schedule(len(train), cfg, total), st):
        if idx is None:  # the epoch's end
            if val:
                v = {"step": st["step"], "epoch": epoch, **grpo_eval(model, tok, val, graders, cfg)}
                log.write(v)
                st["vals"].append(v)
                mark = ""
                if st["best"] is None or v["val_reward"] > st["best"]["val_reward"]:
                    st["best"], mark = v, " (best)"
                    _save_best(model, tok, work)
                log.say(f"epoch {epoch}: held-out reward {v['val_reward']:.3f}{mark}")
            st["epoch"], st["k"] = epoch + 1, 0
            ck.save(st, t0)
            continue
        t = time.time()
        prompts = [train[i][0] for i in idx]
        refs = [train[i][1] for i in idx]
        p_ids = [prompt_ids(tok, p) for p in prompts]
        gens = sample(model, tok, [p for p in p_ids for _ in range(g)], cfg, seed=cfg.seed * 100003 + st["step"])
        texts = [tok.decode(new, skip_special_tokens=True).strip() for new, _ in gens]
        rep_prompts = [p for p in prompts for _ in range(g)]
        rewards, means = grade(graders, rep_prompts, texts, [r for r in refs for _ in range(g)])
        adv = group_advantages(torch.tensor(rewards).view(len(idx), g)).view(-1)
        encs = [_completion_enc(p_ids[i // g], new, stopped, stop_id) for i, (new, stopped) in enumerate(gens)]
        keep = [i for i, e in enumerate(encs) if e.n_answer > 0]
        n_tok = sum(encs[i].n_answer for i in keep)
        loss_sum = kl_sum = 0.0
        for m in range(0, len(keep), mb):
            rows_i = keep[m : m + mb]
            ids, mask, labels = collate(encs, rows_i, pad)
            with torch.no_grad(), reference_of(model, has_ref), amp(cfg, model):
                ref_lp, _ = token_logps(model, ids, mask, labels)
            with amp(cfg, model):
                lp, rows = token_logps(model, ids, mask, labels)
            a = adv[rows_i].to(lp.device)[rows]
            # on-policy, one update per sample: the policy ratio is exp(lp - lp.detach()) = 1 with the
            # gradient of lp; the KL to the reference is the k3 estimator (Schulman), always >= 0
            d = ref_lp - lp
            kl = torch.exp(d) - d - 1
            per_token = -(torch.exp(lp - lp.detach()) * a) + cfg.grpo_beta * kl
            (per_token.sum() / max(n_tok, 1)).backward()  # mean over the step's completion tokens
            loss_sum += float(per_token.detach().sum())
            kl_sum += float(kl.detach().sum())
            st["tokens"] += int(mask.sum())
        norm = optim.step()
        st["step"], st["k"] = st["step"] + 1, k + 1
        st["t_work"] += time.time() - t
        st["last_loss"] = loss_sum / max(n_tok, 1)
        mean_r = sum(rewards) / len(rewards)
        log.write({"step": st["step"], "epoch": epoch, "loss": round(st["last_loss"], 6), "reward": round(mean_r, 4),
                   **{f"reward_{n}": round(v, 4) for n, v in means.items()}, "kl": round(kl_sum / max(n_tok, 1), 6),
                   "completion_tokens": round(n_tok / len(encs), 1), "lr": optim.lr, "grad_norm": round(norm, 4),
                   "tokens": st["tokens"], "tokens_per_s": round(st["tokens"] / st["t_work"], 1)})
        log.say(f"step {st['step']}/{total}: reward {mean_r:.3f} ("
                + ", ".join(f"{n} {v:.3f}" for n, v in means.items())
                + f"), kl {kl_sum / max(n_tok, 1):.4f}, {n_tok / len(encs):.0f} tokens/completion, {time.time() - t:.0f}s")
        if cfg.save_every and st["step"] % cfg.save_every == 0:
            ck.save(st, t0)
    if has_ref:
        model.delete_adapter("reference")
    return _end(cfg, "grpo", model, tok, work, out, model_dir, st, t0, len(train), log)


def _end(cfg, method: str, model, tok, work: Path, out: Path, model_dir, st: dict, t0: float, n: int, log: _Log) -> PrefResult:
    log.close()
    result = PrefResult(str(out), method, st["step"], st["last_loss"], round(st["tokens"] / max(st["t_work"], 1e-9), 1),
                        round(time.time() - t0, 1), n, st["start"], st["vals"], st["best"])
    _finish(cfg, model, tok, work, out, model_dir, result, work / "best" if st["best"] else None)
    return result


def train_preference(cfg, *, overwrite: bool, quiet: bool, trust_remote_code: bool, resume: bool = False,
                     allow_changed_data: bool = False, config_file: str | None = None) -> PrefResult:
    """--method dpo / grpo: the same run-directory rules as SFT (train/rundir.py: a checked --out, a
    .partial dir swapped into place at the end, checkpoints to --resume from, the data checked on resume)."""

    if cfg.method == "dpo" and cfg.graders:
        raise UserError("--graders is for --method grpo; dpo learns from the chosen/rejected pairs themselves")
    out, work = rundir.begin(cfg, overwrite=overwrite, resume=resume, config_file=config_file)
    ckpt = checkpoint.latest(work / "checkpoints") if resume else None
    if ckpt is not None:
        rundir.check_data(work, cfg, ckpt, allow_changed_data)
    rundir.check_disk(out, cfg)
    if ckpt is None:
        rundir.record(work, cfg, rundir.fingerprint(cfg))
    try:
        fn = train_dpo if cfg.method == "dpo" else train_grpo
        return fn(cfg, out=out, work=work, quiet=quiet, trust_remote_code=trust_remote_code)
    finally:
        if work.exists() and not (work / "checkpoints").is_dir():
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from
