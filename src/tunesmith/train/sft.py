"""Supervised fine-tuning (LoRA, DoRA, QLoRA, full, freeze, prompt and prefix tuning): the method
the run harness (run.py) trains with an answer-token loss.

The step is our own rather than transformers.Trainer/TRL: it computes the output layer and the
cross-entropy only at answer positions (most positions are prompt, and the vocabulary projection
is a large share of a small model's FLOPs), and normalizes the loss over all answer tokens of the
optimizer step, so batch 8 == batch 4 x accumulation 2. Under torchrun each step's examples are
dealt out across the ranks (distributed.py).
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from tunesmith.data.formats import load_examples, locate_paths
from tunesmith.data.mix import is_mix, load_training_mix, with_replay
from tunesmith.data.tools import refuse_tools
from tunesmith.errors import UserError
from tunesmith.models.chat import IGNORE, split_prompt
from tunesmith.models.loading import generate, load_tokenizer
from tunesmith.models.resolve import resolve
from tunesmith.scoring.metrics import scores
from tunesmith.train import distributed as dist
from tunesmith.train.batching import (
    batches,
    encode_all,
    micro_batches,
    n_answer_tokens,
    pass_budget,
    pass_tensors,
)
from tunesmith.train.config import LOW_REPLAY, TrainConfig
from tunesmith.train.documents import document_rows, general_rows
from tunesmith.train.loss import answer_loss_sum
from tunesmith.train.precision import amp, autocast_device, token_budget
from tunesmith.train.run import State, StepOut
from tunesmith.train.setup import setup_model


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
    train_ex = load_examples(train_path, "--data")
    if cfg.replay:
        new = len(train_ex)
        train_ex, k = with_replay(train_ex, cfg.replay, cfg.replay_ratio, cfg.seed)
        low = LOW_REPLAY if cfg.replay_ratio < 3 else ""
        print(
            f"replay: {k} earlier examples from {cfg.replay} beside the {new} new ones{low}", file=sys.stderr
        )
    return train_ex, (load_examples(val_path, "--val") if val_path else []), train_path


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
    if (
        sharded_loss is not None
    ):  # FSDP: each forward is collective, every rank runs as many (a spare one is not counted)
        groups += [[]] * (-(-len(dist.shard(order, 0, size)) // cfg.micro_batch_size) - len(groups))
    device = autocast_device(cfg)
    with torch.no_grad():
        for batch in groups:
            ids, mask, labels, segments = pass_tensors(encoded, batch or order[:1], pad_id, cfg)
            with amp(device, model):
                if sharded_loss is not None:
                    loss, n = sharded_loss(ids, mask, labels), int((labels[:, 1:] != IGNORE).sum())
                else:
                    loss, n = answer_loss_sum(model, ids, mask, labels, segments)
            if batch:
                total += float(loss)
                count += n
    model.train(was_training)
    total, count = dist.all_sum([total, count])
    return total / max(count, 1)


def validate_generation(model, tok, val_gen: tuple[list, list], cfg: TrainConfig) -> float:
    """--eval-metric: greedy answers for the validation prompts, scored against their references (0-100)."""
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


@dataclass
class Encoded:
    """The run's data through its chat template and tokenizer: what the plan counts and Sft trains on, so
    a `train` tokenizes its data once (the plan before the model is loaded, the run after)."""

    train: list
    val: list
    dropped: list[str]  # a line per over-long training example
    val_dropped: list[str]
    val_examples: list
    path: str
    documents: dict | None = None  # --documents: what the run records of them (held out, hash, counts)


def encode_data(cfg: TrainConfig, tok) -> Encoded:
    if cfg.documents:
        return encode_documents(cfg, tok)
    train_ex, val_ex, path = load_data(cfg)
    train_enc, dropped = encode_all(tok, train_ex, cfg)
    val_enc, val_dropped = encode_all(tok, val_ex, cfg)
    if not train_enc:
        raise UserError(
            f"--data {path}: every example is longer than --max-length {cfg.max_length}; raise it"
        )
    return Encoded(train_enc, val_enc, dropped, val_dropped, val_ex, str(path))


def encode_documents(cfg: TrainConfig, tok) -> Encoded:
    """--documents: the folder's rows (documents.py), held-out documents as validation, --general mixed in."""
    d = document_rows(cfg.documents, tok, cfg.max_length, cfg.held_out, cfg.seed)
    train = d.train
    general = 0
    if cfg.general:
        want = int(cfg.general_ratio * sum(len(r.input_ids) for r in d.train))
        mixed = general_rows(cfg.general, tok, cfg.max_length, want, cfg.seed)
        general = sum(len(r.input_ids) for r in mixed)
        train = train + mixed
    about = {"folder": str(Path(cfg.documents).resolve()), "sha256": d.sha256, "tokens": d.tokens,
             "trained": len(d.trained), "held_out": d.held_out, "skipped": d.skipped,
             "rows": {"train": len(d.train), "val": len(d.val)}, "general_tokens": general}  # fmt: skip
    return Encoded(train, d.val, [], [], [], cfg.documents, about)


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


def auto_micro_batch(cfg: TrainConfig, on_cpu: bool) -> int:
    """--micro-batch-size 0 (auto): passes of up to TOKEN_BUDGET tokens under CPU bf16 (0 stays), else one
    example per pass on a CPU and the largest divisor of the batch up to 4 on a GPU."""
    if cfg.micro_batch_size or token_budget(cfg):
        return cfg.micro_batch_size
    return 1 if on_cpu else max(d for d in range(1, 5) if cfg.batch_size % d == 0)


class Sft:
    """The SFT method: examples in, answer-token loss, validation loss (and --eval-metric) out."""

    bar = True

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        trust_remote_code: bool = False,
        quiet: bool = False,
        resumed_from: str | None = None,
        encoded: Encoded | None = None,
    ):
        if encoded is None:  # the data's errors before the model is loaded
            model_dir = resolve(cfg.model, trust_remote_code=trust_remote_code)
            encoded = encode_data(cfg, load_tokenizer(model_dir, trust_remote_code))
        model, tok, self.model_dir = setup_model(cfg, trust_remote_code)
        on_cpu = next(model.parameters()).device.type == "cpu"
        cfg = replace(cfg, micro_batch_size=auto_micro_batch(cfg, on_cpu))  # the run's config, resolved once
        self.cfg, self.model, self.tok = cfg, model, tok
        self.train_enc, self.val_enc, self.dropped = encoded.train, encoded.val, encoded.dropped
        val_ex, train_path = encoded.val_examples, encoded.path
        for d in encoded.dropped + encoded.val_dropped:
            print(d, file=sys.stderr)
        ctx = getattr(model.config, "max_position_embeddings", None)
        longest = max(len(e.input_ids) for e in self.train_enc + self.val_enc)
        if ctx and longest > ctx:
            raise UserError(
                f"--data {train_path}: an example has {longest} tokens, more than the model's context "
                f"({ctx}); lower --max-length to {ctx} or shorten the examples"
            )
        if not quiet:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            what = f"resuming from {resumed_from}: " if resumed_from else ""
            items = "rows of documents" if encoded.documents else "examples"
            print(
                f"{what}training {cfg.method} on {len(self.train_enc)} {items} ({len(self.val_enc)} "
                "validation), "
                f"{trainable:,} of {total:,} parameters trainable",
                file=sys.stderr,
            )
        if encoded.documents:
            self.files = {"documents.json": encoded.documents}
            self.about = {"documents": {k: encoded.documents[k] for k in ("folder", "sha256", "tokens")}}
            for s in encoded.documents["skipped"]:
                print(f"skip  {s}", file=sys.stderr)
        self.val_gen = None
        if cfg.eval_metric:
            if not val_ex:
                raise UserError(
                    "--eval-metric needs validation examples: --val FILE, or val.jsonl beside the training "
                    "data"
                )
            kept = val_ex[: cfg.eval_limit] if cfg.eval_limit else val_ex
            refuse_tools(kept, "--eval-metric (generating answers)")
            self.val_gen = tuple(map(list, zip(*(split_prompt(ex.messages) for ex in kept))))
        self.metric = f"val_{cfg.eval_metric}" if cfg.eval_metric else None
        self.goal = (self.metric, True) if self.metric else ("val_loss", False)
        self.n_items, self.n_val = len(self.train_enc), len(self.val_enc)
        # before the optimizer: FSDP swaps the parameters
        self.loss_fn = dist.wrap(model, answer_loss_sum, cfg.fsdp)
        self.sharded_loss = self.loss_fn if dist.sharded(model) else None
        self.pad, self.budget = tok.pad_token_id, pass_budget(self.train_enc, cfg)
        self.autocast = autocast_device(cfg)

    def plan(self, epoch: int) -> list:
        return batches(self.train_enc, self.cfg, epoch)

    def begin(self, state: State, resumed: bool) -> None:
        pass

    def train_step(self, micro: list[list[int]], state: State) -> StepOut:
        enc = self.train_enc
        rank, world_size = dist.world()
        n_ans = sum(n_answer_tokens(enc, m) for m in micro)
        mine = dist.shard([i for m in micro for i in m], rank, world_size)
        weight = world_size / n_ans  # DDP averages gradients over ranks; we want the sum over the step
        if not mine:  # fewer examples than ranks: take part with a zero-weight example
            mine, weight = micro[0][:1], 0.0
        local = micro_batches(enc, mine, self.cfg, self.budget)
        step_loss, tokens = 0.0, 0
        for j, m in enumerate(local):
            ids, mask, labels, segments = pass_tensors(enc, m, self.pad, self.cfg)
            with dist.accumulating(self.loss_fn, last=j == len(local) - 1):
                with amp(self.autocast, self.model):
                    loss = self.loss_fn(ids, mask, labels, segments)
                (loss * weight).backward()
            step_loss += float(loss.detach()) / n_ans if weight else 0.0
            tokens += sum(len(enc[i].input_ids) for i in m) if weight else 0
        step_loss, tokens = dist.all_sum([step_loss, tokens])
        return StepOut(step_loss, int(tokens), n_ans)

    def step_line(self, out: StepOut, state: State, total: int, speed: float, step_s: float) -> None:
        return None  # the progress bar shows the step

    def evaluate(self) -> dict:
        rec = {
            "val_loss": round(validate(self.model, self.val_enc, self.cfg, self.pad, self.sharded_loss), 6)
        }
        if self.metric:
            rec[self.metric] = round(validate_generation(self.model, self.tok, self.val_gen, self.cfg), 2)
        return rec

    def _score(self, rec: dict) -> str:
        return f", {self.metric.replace('_', ' ')} {rec[self.metric]:.1f}" if self.metric else ""

    def start_line(self, rec: dict) -> str:
        return f"validation loss before training: {rec['val_loss']:.4f}{self._score(rec)}"

    def val_line(self, rec: dict, state: State, mark: str) -> str:
        return (
            f"step {state.step} (epoch {state.epoch}): train loss {state.last_loss:.4f}, "
            f"val loss {rec['val_loss']:.4f}{self._score(rec)}{mark}"
        )

    def epoch_line(self, epoch: int, state: State) -> str:
        return f"epoch {epoch}/{self.cfg.epochs}: train loss {state.last_loss:.4f}"

    def end(self) -> None:
        pass

    def result(self, st: State, run_dir: Path) -> Result:
        train_s = max(1e-9, st.train_s)  # tokens/s count training time, not validation
        return Result(
            str(run_dir),
            st.step,
            st.last_loss,
            [v["val_loss"] for v in st.vals],
            round(st.tokens / train_s, 1),
            round(st.answer_tokens / train_s, 1),
            round(st.elapsed, 1),
            len(self.train_enc),
            len(self.dropped),
            st.best,
            st.stopped,
            st.start.get("val_loss"),
        )
