"""`train --task classify | multilabel | regress`: a head on the model (models/heads.py) trained with
LoRA (the head in full, as PEFT's SEQ_CLS task saves it) or in full, on the run harness every method
shares (run.py: checkpoints, exact resume, validation, the best step, early stopping, the registry).

Losses: cross-entropy for one class (`--class-weights`: each class weighted by n / (k * its count),
for imbalance), binary cross-entropy per class for several, and mean squared error for a number
(`--huber DELTA`: Huber's loss instead, for targets with outliers), on the target scaled to mean 0 and
standard deviation 1 (labels.json keeps the scaling). The best step is picked by the task's measure
on the validation examples: accuracy, micro-F1, or RMSE in the target's own units.

Without a validation file a tenth of the examples is held out, seeded, by class for one class (each
class its share). Refused before anything loads: one class only, a target with no variance, and a
validation label the training examples never show (named by its line, with the known classes).
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.formats import load_examples, locate_paths
from tunesmith.data.labels import RARE, class_names, known_labels, stratified_order
from tunesmith.errors import UserError
from tunesmith.models.heads import LABELS_FILE, MEASURE, load_classifier
from tunesmith.train.config import TrainConfig, held_out_count
from tunesmith.train.precision import amp, autocast_device
from tunesmith.train.run import State, StepOut
from tunesmith.train.setup import peft_config

GOAL = {task: (f"val_{m}", task != "regress") for task, m in MEASURE.items()}  # rmse: lower is better
WANT = {
    "classify": '{"text", "label"}',
    "multilabel": '{"text", "labels": [...]}',
    "regress": '{"text", "target"}',
}
MANY_CLASSES = 1000


@dataclass
class ClassifyResult:
    run_dir: str
    task: str
    steps: int
    train_loss: float
    val: list[dict]
    val_start: dict
    tokens_per_s: float
    wall_s: float
    examples: int
    best: dict | None = None
    early_stopped: bool = False


def load_labelled(cfg: TrainConfig):
    """Training and validation examples of the task; without a validation file a seeded tenth held out
    (stratified for one class). Returns (train, val, train_path, held_out)."""
    train_path, val_path = locate_paths(cfg.data, cfg.val)
    train = load_examples(train_path, "--data", kind="label")
    val = load_examples(val_path, "--val", kind="label") if val_path else []
    for ex in train + val:
        if ex.kind != cfg.task:
            raise UserError(
                f"{ex.path}:{ex.line}: a {ex.kind} example; --task {cfg.task} trains on {WANT[cfg.task]}"
            )
    if val:
        return train, val, train_path, False
    k = held_out_count(len(train))
    if cfg.task == "classify":
        order = stratified_order([e.label for e in train], cfg.seed)
    else:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
    held = set(order[:k])
    return (
        [e for i, e in enumerate(train) if i not in held],
        [train[i] for i in sorted(held)],
        train_path,
        True,
    )


def label_space(task: str, train: list, val: list, path) -> dict:
    """What the outputs mean (labels.json), checked against the validation examples."""
    if task == "regress":
        ys = [e.label for e in train]
        mean = sum(ys) / len(ys)
        std = math.sqrt(sum((y - mean) ** 2 for y in ys) / len(ys))
        if std == 0:
            raise UserError(
                f"--data {path}: every target is {ys[0]:g}; a model learns nothing from a constant"
            )
        return {"task": task, "mean": mean, "std": std}
    names = sorted({c for e in train for c in class_names(e.label)})
    if len(names) < 2 and task == "classify":
        raise UserError(f"--data {path}: one class only ({names[0]!r}); a classifier needs two at least")
    if not names:
        raise UserError(f"--data {path}: no example has a class")
    has = [c for e in train for c in class_names(e.label)]
    # counts and examples: what eval's majority baseline predicts (labels.json)
    return {"task": task, "classes": names, "counts": [has.count(c) for c in names], "examples": len(train)}


def many_classes(space: dict, hidden: int) -> str:
    """What thousands of classes cost, said before the first step: the head's size, its training state,
    and how few examples most classes have."""
    n, counts = len(space["classes"]), sorted(space["counts"])
    weights = n * hidden
    rare = sum(c < RARE for c in counts)
    return (
        f"{n} classes: the head is {n} x {hidden} = {weights / 1e6:.1f} M weights trained in full "
        f"({12 * weights / 2**20:.0f} MiB with their gradients and AdamW's state) and {n} outputs per text; "
        f"the median class has {counts[n // 2]} training examples, and {rare} have fewer than {RARE}, "
        "too few to learn: merging rare classes into one (and --other for the test set) usually does better"
    )


def targets(task: str, examples: list, space: dict) -> list:
    if task == "regress":
        return [(e.label - space["mean"]) / space["std"] for e in examples]
    index = {c: i for i, c in enumerate(space["classes"])}
    if task == "classify":
        return [index[e.label] for e in examples]
    return [[1.0 if c in e.label else 0.0 for c in space["classes"]] for e in examples]


class Classify:
    """The method of `--task`: texts and labels in, the task's loss, validation measures out."""

    bar = True

    def __init__(self, cfg: TrainConfig, *, trust_remote_code: bool = False, quiet: bool = False,
                 resumed_from: str | None = None):  # fmt: skip
        import torch

        train, val, path, held = load_labelled(cfg)
        self.space = space = label_space(cfg.task, train, val, path)
        if cfg.task != "regress":
            val = known_labels(val, space["classes"], cfg.other)
        n_out = len(space.get("classes", [])) if cfg.task != "regress" else 1
        torch.manual_seed(cfg.seed)  # the new head's initial weights: the same run, the same head
        model, tok, self.model_dir = load_classifier(
            cfg.model, n_out, cfg.task, trust_remote_code=trust_remote_code
        )
        if n_out > MANY_CLASSES:
            print(many_classes(space, model.config.hidden_size), file=sys.stderr)
        if cfg.method in ("lora", "dora"):
            from peft import get_peft_model

            pc = peft_config(cfg)
            pc.task_type = "SEQ_CLS"  # the head is saved whole beside the adapter (modules_to_save)
            model = get_peft_model(model, pc)
        elif cfg.method != "full":
            raise UserError(f"--task {cfg.task} trains with --method lora, dora or full, not {cfg.method}")
        torch.manual_seed(cfg.seed)
        self.cfg, self.model, self.tok = cfg, model, tok
        self.files = {LABELS_FILE: space}  # written beside the weights when the run finishes
        (self.train_ids, cut_train), (self.val_ids, cut_val) = self._encode(train), self._encode(val)
        cut = cut_train + cut_val
        self.train_y, self.val_y = targets(cfg.task, train, space), targets(cfg.task, val, space)
        self.weights = self._class_weights() if cfg.class_weights else None
        self.goal = GOAL[cfg.task]
        self.n_items, self.n_val = len(train), len(val)
        self.autocast = autocast_device(cfg)
        if not quiet:
            if held:
                print(f"no validation file: holding out {len(val)} of {len(train) + len(val)} examples "
                      f"(seed {cfg.seed}) to measure on", file=sys.stderr)  # fmt: skip
            if cut:
                print(
                    f"{cut} texts longer than --max-length {cfg.max_length} tokens: cut to it",
                    file=sys.stderr,
                )
            what = f"{n_out} classes" if cfg.task != "regress" else "a number"
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"{'resuming from ' + resumed_from + ': ' if resumed_from else ''}training {cfg.method} to "
                  f"{cfg.task} ({what}) on {len(train)} examples ({len(val)} validation), {trainable:,} "
                  "parameters trainable", file=sys.stderr)  # fmt: skip

    def _encode(self, examples: list) -> tuple[list[list[int]], int]:
        """Token ids of each text, cut to --max-length (a label depends on the whole text, but a cut one
        still trains; dropping it would lose the class), and how many were cut."""
        full = [self.tok(e.messages[0]["content"])["input_ids"] for e in examples]
        return [ids[: self.cfg.max_length] for ids in full], sum(
            len(ids) > self.cfg.max_length for ids in full
        )

    def _class_weights(self):
        import torch

        k = len(self.space["classes"])
        if self.cfg.task == "classify":
            counts = [self.train_y.count(i) for i in range(k)]
        else:
            counts = [sum(y[i] for y in self.train_y) for i in range(k)]
        n = len(self.train_y)
        return torch.tensor([n / (k * max(c, 1)) for c in counts], dtype=torch.float32)

    def _batch(self, ids_list: list[list[int]], idx: list[int]):
        import torch

        width = max(len(ids_list[i]) for i in idx)
        pad = self.tok.pad_token_id
        ids = torch.tensor([ids_list[i] + [pad] * (width - len(ids_list[i])) for i in idx])
        mask = torch.tensor([[1] * len(ids_list[i]) + [0] * (width - len(ids_list[i])) for i in idx])
        dev = next(self.model.parameters()).device
        return ids.to(dev), mask.to(dev)

    def _logits(self, ids_list, idx):
        ids, mask = self._batch(ids_list, idx)
        with amp(self.autocast, self.model):
            return self.model(input_ids=ids, attention_mask=mask).logits.float()

    def _loss_sum(self, logits, ys):
        import torch
        import torch.nn.functional as F

        dev = logits.device
        if self.cfg.task == "classify":
            w = self.weights.to(dev) if self.weights is not None else None
            return F.cross_entropy(logits, torch.tensor(ys, device=dev), weight=w, reduction="sum")
        if self.cfg.task == "multilabel":
            w = self.weights.to(dev) if self.weights is not None else None
            per = F.binary_cross_entropy_with_logits(
                logits, torch.tensor(ys, device=dev), pos_weight=w, reduction="none"
            )
            return per.sum()
        y = torch.tensor(ys, device=dev, dtype=torch.float32)
        if self.cfg.huber:
            return F.huber_loss(logits[:, 0], y, delta=self.cfg.huber, reduction="sum")
        return F.mse_loss(logits[:, 0], y, reduction="sum")

    def plan(self, epoch: int) -> list:
        rng = random.Random(self.cfg.seed * 1000 + epoch)
        order = list(range(self.n_items))
        rng.shuffle(order)
        b = self.cfg.batch_size
        return [order[s : s + b] for s in range(0, len(order), b)]

    def begin(self, state: State, resumed: bool) -> None:
        pass

    def train_step(self, idx: list[int], state: State) -> StepOut:
        micro = self.cfg.micro_batch_size or len(idx)
        total = 0.0
        for s in range(0, len(idx), micro):
            part = idx[s : s + micro]
            loss = self._loss_sum(self._logits(self.train_ids, part), [self.train_y[i] for i in part])
            (loss / len(idx)).backward()
            total += float(loss.detach())
        return StepOut(total / len(idx), sum(len(self.train_ids[i]) for i in idx))

    def step_line(self, out: StepOut, state: State, total: int, speed: float, step_s: float) -> None:
        return None

    def predict_val(self):
        """The validation examples' outputs (logits), in order, without gradients."""
        import torch

        was = self.model.training
        self.model.eval()
        outs = []
        with torch.no_grad():
            order = sorted(range(self.n_val), key=lambda i: len(self.val_ids[i]))
            for s in range(0, len(order), 16):
                part = order[s : s + 16]
                outs += list(zip(part, self._logits(self.val_ids, part).cpu()))
        self.model.train(was)
        return torch.stack([o for _, o in sorted(outs, key=lambda x: x[0])])

    def evaluate(self) -> dict:
        import torch

        logits = self.predict_val()
        loss = float(self._loss_sum(logits, self.val_y)) / max(self.n_val, 1)
        rec = {"val_loss": round(loss, 6)}
        if self.cfg.task == "classify":
            pred = logits.argmax(-1).tolist()
            rec["val_accuracy"] = round(100 * sum(p == y for p, y in zip(pred, self.val_y)) / self.n_val, 2)
        elif self.cfg.task == "multilabel":
            pred = (torch.sigmoid(logits) > 0.5).tolist()
            tp = sum(p and y for ps, ys in zip(pred, self.val_y) for p, y in zip(ps, ys))
            fp = sum(p and not y for ps, ys in zip(pred, self.val_y) for p, y in zip(ps, ys))
            fn = sum(y and not p for ps, ys in zip(pred, self.val_y) for p, y in zip(ps, ys))
            rec["val_micro_f1"] = round(100 * 2 * tp / max(2 * tp + fp + fn, 1), 2)
        else:
            std = self.space["std"]
            mse = sum((float(o) - y) ** 2 for o, y in zip(logits[:, 0], self.val_y)) / self.n_val
            rec["val_rmse"] = round(math.sqrt(mse) * std, 6)
        return rec

    def _measure(self, rec: dict) -> str:
        key = self.goal[0]
        return f"{key[4:].replace('_', ' ')} {rec[key]:.4g}"

    def start_line(self, rec: dict) -> str:
        return f"before training: val loss {rec['val_loss']:.4f}, {self._measure(rec)}"

    def val_line(self, rec: dict, state: State, mark: str) -> str:
        return (f"step {state.step} (epoch {state.epoch}): train loss {state.last_loss:.4f}, val loss "
                f"{rec['val_loss']:.4f}, {self._measure(rec)}{mark}")  # fmt: skip

    def epoch_line(self, epoch: int, state: State) -> str:
        return f"epoch {epoch}/{self.cfg.epochs}: train loss {state.last_loss:.4f}"

    def end(self) -> None:
        pass

    def result(self, st: State, run_dir: Path) -> ClassifyResult:
        return ClassifyResult(str(run_dir), self.cfg.task, st.step, st.last_loss, st.vals, st.start,
                              round(st.tokens / max(st.train_s, 1e-9), 1), round(st.elapsed, 1), self.n_items,
                              st.best, st.stopped)  # fmt: skip
