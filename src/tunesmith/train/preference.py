"""What DPO (dpo.py) and GRPO (grpo.py) share as methods of the run harness: their data (preference
pairs, or prompts with a reference) with a seeded held-out share when there is no validation file,
their step plan, the result they report, and the per-answer log-probabilities both optimize.

Both train a LoRA adapter (on the base, or continuing an SFT adapter with --from-adapter) and write
the same run directory as `--method lora`, so eval, generate, merge, export and serve take it as it
is. Our own loops rather than TRL's DPOTrainer/GRPOTrainer, for the same reason as SFT's (sft.py):
the output layer and log-softmax run only at answer positions.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import load_examples, locate_paths
from tunesmith.data.tools import refuse_tools
from tunesmith.errors import UserError
from tunesmith.models.chat import Encoded
from tunesmith.train.batching import collate
from tunesmith.train.config import TrainConfig, held_out_count
from tunesmith.train.loss import answer_logits
from tunesmith.train.precision import autocast_device
from tunesmith.train.run import State


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


def load_split(cfg: TrainConfig, kind: str):
    """Training and held-out items of the wanted kind ("preference" pairs, or "prompts"); without a
    validation file a seeded tenth is held out. Returns (train, val, train_path, held_out)."""
    train_path, val_path = locate_paths(cfg.data, cfg.val)
    train = load_examples(train_path, "--data", kind=None)
    val = load_examples(val_path, "--val", kind=None) if val_path else []
    for ex in train + val:
        if (ex.kind == "preference") != (kind == "preference"):
            want = (
                'preference pairs {"prompt", "chosen", "rejected"}'
                if kind == "preference"
                else "prompts with a reference answer (chat or prompt/completion), not preference pairs"
            )
            raise UserError(f"{ex.path}:{ex.line}: --method {cfg.method} trains on {want}")
    refuse_tools(train + val, f"--method {cfg.method}")
    labelled = next((e for e in train + val if e.label is not None), None)
    if labelled is not None:
        raise UserError(
            f"{labelled.path}:{labelled.line}: a labelled example: --method {cfg.method} trains on text"
        )
    held_out = not val
    if held_out:  # hold out pairs/prompts to measure on, seeded and reported
        rng = random.Random(cfg.seed)
        order = list(range(len(train)))
        rng.shuffle(order)
        k = held_out_count(len(train))
        val = [train[i] for i in sorted(order[:k])]
        train = [train[i] for i in sorted(order[k:])]
    return train, val, train_path, held_out


def schedule(n: int, cfg: TrainConfig) -> list[list[list[int]]]:
    """Each epoch's steps (item indices): items shuffled per epoch from one seeded generator."""
    rng, plan = random.Random(cfg.seed), []
    for _ in range(cfg.epochs):
        order = list(range(n))
        rng.shuffle(order)
        plan.append([order[s : s + cfg.batch_size] for s in range(0, n, cfg.batch_size)])
    return plan


class Preference:
    """The part of a preference method the harness sees the same way for DPO and GRPO."""

    bar = False  # a line per step: steps are few and slow (GRPO samples), each line says what moved
    goal: tuple[str, bool]

    def __init__(self, cfg: TrainConfig, quiet: bool):
        self.cfg, self.quiet = cfg, quiet
        self.autocast = autocast_device(cfg)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def ready(self, n_train: int, n_val: int, held_from: int, unit: str, intro: str, resumed: str | None):
        """The items are built: the step plan, and what the run says before it starts. `held_from`: how many
        items were read when the validation ones were held out of them (0: there was a validation file)."""
        self.pad, self.n_items, self.n_val = self.tok.pad_token_id, n_train, n_val
        self._plan = schedule(n_train, self.cfg)
        if held_from:
            self.say(
                f"no validation file: holding out {n_val} of {held_from} {unit} (seed {self.cfg.seed}) to "
                "measure on"
            )
        self.say(intro)
        if resumed:
            self.say(f"resuming from {resumed}")

    def plan(self, epoch: int) -> list:
        return self._plan[epoch - 1]

    def begin(self, state: State, resumed: bool) -> None:
        pass

    def epoch_line(self, epoch: int, state: State) -> None:
        return None

    def end(self) -> None:
        pass

    def result(self, st: State, run_dir: Path) -> PrefResult:
        return PrefResult(
            str(run_dir),
            self.cfg.method,
            st.step,
            st.last_loss,
            round(st.tokens / max(st.train_s, 1e-9), 1),
            round(st.elapsed, 1),
            self.n_items,
            st.start,
            st.vals,
            st.best,
        )
