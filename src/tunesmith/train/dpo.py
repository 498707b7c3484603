"""DPO (Rafailov et al. 2023): a LoRA adapter learns from preference pairs {prompt, chosen, rejected}.

With `--dpo-sft W` (default 1, as RPO, Pang et al. 2024) the loss adds W times the chosen answer's
negative log-likelihood per token: plain DPO can lower both answers' likelihood as long as the
rejected one falls faster, which is how a few pairs wreck a model that was good; the SFT term keeps
the chosen answers likely. Fewer pairs than MIN_PAIRS are refused unless --allow-few-pairs.

The reference model is the starting point (the base, or the --from-adapter adapter) and never
changes, so its log-probabilities of every pair are computed once before training and kept in the
run's state (a resumed run does not recompute them): no second model in memory, and one forward
pass per pair per step instead of two.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tunesmith.errors import UserError
from tunesmith.models.chat import Encoded, encode_chat
from tunesmith.train.config import MEASURED, MIN_PAIRS, TrainConfig
from tunesmith.train.precision import amp
from tunesmith.train.preference import Preference, load_split, sequence_logps
from tunesmith.train.run import State, StepOut
from tunesmith.train.setup import setup_model


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta: float):
    """Direct Preference Optimization, per pair: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))).
    Also returns the implicit rewards beta * (pi - ref) of chosen and rejected."""
    import torch.nn.functional as F

    r_c = beta * (pi_chosen - ref_chosen)
    r_r = beta * (pi_rejected - ref_rejected)
    return -F.logsigmoid(r_c - r_r), r_c.detach(), r_r.detach()


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


def pair_logps(model, pairs: list[Pair], pad_id: int, autocast: str | None, chunk: int = 4):
    """Summed answer log-probabilities of every pair's chosen and rejected answer (no gradients)."""
    import torch

    was = model.training
    model.eval()
    chosen, rejected = [], []
    with torch.no_grad(), amp(autocast, model):
        for s in range(0, len(pairs), chunk):
            part = pairs[s : s + chunk]
            lp = sequence_logps(model, [p.chosen for p in part] + [p.rejected for p in part], pad_id)
            chosen.append(lp[: len(part)])
            rejected.append(lp[len(part) :])
    model.train(was)
    return torch.cat(chosen), torch.cat(rejected)


def dpo_eval(model, pairs: list[Pair], beta: float, pad_id: int, autocast: str | None) -> dict:
    """Held-out pairs: DPO loss, reward accuracy (chosen's implicit reward above rejected's), mean
    margin, and a reference-free accuracy: the chosen answer has the higher average log-probability
    per token (measurable before training, when the rewards are all 0)."""
    import torch

    c, r = pair_logps(model, pairs, pad_id, autocast)
    ref_c = torch.tensor([p.ref_chosen for p in pairs], device=c.device)
    ref_r = torch.tensor([p.ref_rejected for p in pairs], device=c.device)
    loss, rc, rr = dpo_loss(c, r, ref_c, ref_r, beta)
    n_c = torch.tensor([max(p.chosen.n_answer, 1) for p in pairs], device=c.device)
    n_r = torch.tensor([max(p.rejected.n_answer, 1) for p in pairs], device=c.device)
    return {
        "val_loss": round(float(loss.mean()), 6),
        "val_accuracy": round(float((rc > rr).float().mean()), 4),
        "val_margin": round(float((rc - rr).mean()), 6),
        "logp_accuracy": round(float((c / n_c > r / n_r).float().mean()), 4),
    }


class Dpo(Preference):
    goal = ("val_loss", False)

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        trust_remote_code: bool = False,
        quiet: bool = False,
        resumed_from: str | None = None,
    ):
        super().__init__(cfg, quiet)
        train_ex, val_ex, train_path, held_out = load_split(cfg, "preference")
        self.model, self.tok, self.model_dir = setup_model(cfg, trust_remote_code)
        self.pairs, dropped = encode_pairs(self.tok, train_ex, cfg.max_length)
        self.val_pairs, vdropped = encode_pairs(self.tok, val_ex, cfg.max_length)
        for d in dropped + vdropped:
            print(d, file=sys.stderr)
        if not self.pairs:
            raise UserError(
                f"--data {train_path}: every pair is longer than --max-length {cfg.max_length}; raise it"
            )
        if len(self.pairs) < MIN_PAIRS and not cfg.allow_few_pairs:
            raise UserError(
                f"--data {train_path}: {len(self.pairs)} preference pairs; on fewer than {MIN_PAIRS}, DPO "
                f"made the model significantly worse in the loop benchmark ({MEASURED}). Train the corrected "
                "answers with SFT and replay instead (--method lora --from-adapter RUN --replay DATA), "
                "collect more pairs, or pass --allow-few-pairs"
            )
        reference = "the --from-adapter adapter" if cfg.from_adapter else "the base model"
        intro = (
            f"dpo on {len(self.pairs)} pairs ({len(self.val_pairs)} held out), beta {cfg.dpo_beta}, "
            f"sft weight {cfg.dpo_sft}; "
            f"reference: {reference} (log-probs computed once)"
        )
        n_all = len(train_ex) + len(val_ex) if held_out else 0
        self.ready(len(self.pairs), len(self.val_pairs), n_all, "pairs", intro, resumed_from)

    def begin(self, state: State, resumed: bool) -> None:
        every = self.pairs + self.val_pairs
        if not resumed:  # the reference is where training starts: score every pair once, before any update
            c, r = pair_logps(self.model, every, self.pad, self.autocast)
            state.extra["ref"] = [[a, b] for a, b in zip(c.tolist(), r.tolist())]
        for p, (lc, lr) in zip(every, state.extra["ref"]):
            p.ref_chosen, p.ref_rejected = lc, lr

    def train_step(self, idx: list[int], state: State) -> StepOut:
        import torch

        loss_sum = acc = margin = sft_sum = 0.0
        tokens = 0
        mb = self.cfg.micro_batch_size or 1
        for m in range(0, len(idx), mb):
            chunk = [self.pairs[i] for i in idx[m : m + mb]]
            encs = [p.chosen for p in chunk] + [p.rejected for p in chunk]
            with amp(self.autocast, self.model):
                lp = sequence_logps(self.model, encs, self.pad)
            n = len(chunk)
            ref_c = torch.tensor([p.ref_chosen for p in chunk], device=lp.device)
            ref_r = torch.tensor([p.ref_rejected for p in chunk], device=lp.device)
            loss, rc, rr = dpo_loss(lp[:n], lp[n:], ref_c, ref_r, self.cfg.dpo_beta)
            # RPO: the chosen answer's negative log-likelihood per answer token, beside the preference
            sft = -lp[:n] / torch.tensor([max(p.chosen.n_answer, 1) for p in chunk], device=lp.device)
            total = loss + self.cfg.dpo_sft * sft if self.cfg.dpo_sft else loss
            (total.sum() / len(idx)).backward()  # the mean over the step's pairs, whatever the micro-batch
            loss_sum += float(loss.detach().sum())
            sft_sum += float(sft.detach().sum())
            acc += float((rc > rr).float().sum())
            margin += float((rc - rr).sum())
            tokens += sum(len(e.input_ids) for e in encs)
        acc, margin = acc / len(idx), margin / len(idx)
        return StepOut(
            loss_sum / len(idx),
            tokens,
            record={
                "reward_accuracy": round(acc, 4),
                "reward_margin": round(margin, 6),
                "chosen_nll": round(sft_sum / len(idx), 6),
            },  # fmt: skip
        )

    def step_line(self, out: StepOut, state: State, total: int, speed: float, step_s: float) -> str:
        return (
            f"step {state.step}/{total}: dpo loss {out.loss:.4f}, reward accuracy "
            f"{out.record['reward_accuracy']:.0%}, "
            f"margin {out.record['reward_margin']:+.3f}, {speed:.0f} tokens/s"
        )

    def evaluate(self) -> dict:
        return dpo_eval(self.model, self.val_pairs, self.cfg.dpo_beta, self.pad, self.autocast)

    def start_line(self, rec: dict) -> str:
        return f"held-out before training: chosen preferred (avg log-prob) {rec['logp_accuracy']:.0%}"

    def val_line(self, rec: dict, state: State, mark: str) -> str:
        return (
            f"epoch {rec['epoch']}: held-out dpo loss {rec['val_loss']:.4f}, reward accuracy "
            f"{rec['val_accuracy']:.0%}, "
            f"margin {rec['val_margin']:+.3f}, chosen preferred (avg log-prob) "
            f"{rec['logp_accuracy']:.0%}{mark}"
        )
