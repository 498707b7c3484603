"""GRPO (Shao et al. 2024): a LoRA adapter learns from its own sampled answers, graded (graders.py).

Each step samples a group of answers per prompt, grades them, and pushes up the answers that beat
their group's mean. The reference for the KL term is the same model with the adapter switched off
when training starts from the base, or a second, frozen copy of the starting adapter (a few MB)
when it continues an SFT adapter: the base weights exist once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tunesmith.models.chat import IGNORE, Encoded, prompt_ids, split_prompt, stop_token_ids
from tunesmith.models.loading import generate, generate_ids
from tunesmith.scoring import hosted
from tunesmith.scoring.templates import item_of
from tunesmith.train.batching import collate
from tunesmith.train.config import TrainConfig
from tunesmith.train.graders import grade, parse_graders
from tunesmith.train.precision import amp
from tunesmith.train.preference import Preference, load_split, token_logps
from tunesmith.train.run import State, StepOut
from tunesmith.train.setup import setup_model


def group_advantages(rewards, eps: float = 1e-4):
    """Each completion's reward relative to the others sampled for the same prompt,
    (r - mean) / (std + eps) within the group; a group where every reward is equal gets 0.
    `rewards` has shape [prompts, group]."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


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


def completion_enc(prompt: list[int], new: list[int], stopped: bool, stop_id: int | None) -> Encoded:
    answer = new + ([stop_id] if stopped and stop_id is not None else [])
    return Encoded(prompt + answer, [IGNORE] * len(prompt) + answer)


def sample(
    model, tok, prompts_ids: list[list[int]], cfg: TrainConfig, seed: int
) -> list[tuple[list[int], bool]]:
    was = model.training
    model.eval()
    model.config.use_cache = True
    try:
        out = generate_ids(
            model,
            prompts_ids,
            pad_id=tok.pad_token_id,
            stop_ids=stop_token_ids(tok),
            max_new_tokens=cfg.grpo_max_new_tokens,
            temperature=cfg.grpo_temperature,
            seed=seed,
        )
    finally:
        model.config.use_cache = False
        model.train(was)
    return out


def grpo_eval(model, tok, val, graders, cfg: TrainConfig, rows=None) -> dict:
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
    rewards, means = grade(graders, list(prompts), [o.text for o in outs], list(refs), rows)
    return {
        "val_reward": round(sum(rewards) / len(rewards), 4),
        **{f"val_{k}": round(v, 4) for k, v in means.items()},
    }


class Grpo(Preference):
    goal = ("val_reward", True)

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        trust_remote_code: bool = False,
        quiet: bool = False,
        resumed_from: str | None = None,
    ):
        super().__init__(cfg, quiet)
        self.graders = parse_graders(
            cfg.graders,
            style=cfg.style,
            rubric=cfg.rubric,
            judge_default=cfg.model,
            trust_remote_code=trust_remote_code,
            hosted_ctx=hosted.Context(
                cfg.grader_judge or None,
                trust_code=cfg.trust_grader_code,
                trust_remote_code=trust_remote_code,
            ),
        )
        train_ex, val_ex, _, held_out = load_split(cfg, "prompts")
        self.model, self.tok, self.model_dir = setup_model(cfg, trust_remote_code)
        self.has_ref = bool(cfg.from_adapter)
        if self.has_ref:  # the starting adapter, frozen, as the KL reference (adapter weights only: MBs)
            self.model.load_adapter(str(Path(cfg.from_adapter)), adapter_name="reference", is_trainable=False)
            self.model.base_model.set_adapter("default")
        self.train = [split_prompt(ex.messages) for ex in train_ex]
        self.val = [split_prompt(ex.messages) for ex in val_ex][: cfg.eval_limit or None]
        # each prompt's data row and file:line, for the hosted graders' {{ item.* }}
        self.rows = [(item_of(ex, r), f"{ex.path}:{ex.line}") for ex, (_, r) in zip(train_ex, self.train)]
        self.val_rows = [(item_of(ex, r), f"{ex.path}:{ex.line}") for ex, (_, r) in zip(val_ex, self.val)]
        self.stop_id = (stop_token_ids(self.tok) or [None])[0]
        graders = ", ".join(f"{g.name}*{g.weight:g}" for g in self.graders)
        intro = (
            f"grpo on {len(self.train)} prompts, {cfg.grpo_group} samples each, graders {graders}, "
            f"KL weight {cfg.grpo_beta}"
        )
        n_all = len(train_ex) + len(val_ex) if held_out else 0
        self.ready(len(self.train), len(self.val), n_all, "prompts", intro, resumed_from)

    def train_step(self, idx: list[int], state: State) -> StepOut:
        import torch

        cfg, model, g = self.cfg, self.model, self.cfg.grpo_group
        prompts = [self.train[i][0] for i in idx]
        refs = [self.train[i][1] for i in idx]
        p_ids = [prompt_ids(self.tok, p) for p in prompts]
        gens = sample(
            model, self.tok, [p for p in p_ids for _ in range(g)], cfg, seed=cfg.seed * 100003 + state.step
        )
        texts = [self.tok.decode(new, skip_special_tokens=True).strip() for new, _ in gens]
        rows = [self.rows[i] for i in idx for _ in range(g)]
        rewards, means = grade(
            self.graders,
            [p for p in prompts for _ in range(g)],
            texts,
            [r for r in refs for _ in range(g)],
            rows,
        )
        adv = group_advantages(torch.tensor(rewards).view(len(idx), g)).view(-1)
        encs = [
            completion_enc(p_ids[i // g], new, stopped, self.stop_id) for i, (new, stopped) in enumerate(gens)
        ]
        keep = [i for i, e in enumerate(encs) if e.n_answer > 0]
        n_tok = sum(encs[i].n_answer for i in keep)
        loss_sum = kl_sum = 0.0
        tokens = 0
        mb = cfg.micro_batch_size or 1
        for m in range(0, len(keep), mb):
            rows_i = keep[m : m + mb]
            ids, mask, labels = collate(encs, rows_i, self.pad)
            with torch.no_grad(), reference_of(model, self.has_ref), amp(self.autocast, model):
                ref_lp, _ = token_logps(model, ids, mask, labels)
            with amp(self.autocast, model):
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
            tokens += int(mask.sum())
        record = {
            "reward": round(sum(rewards) / len(rewards), 4),
            **{f"reward_{n}": round(v, 4) for n, v in means.items()},
            "kl": round(kl_sum / max(n_tok, 1), 6),
            "completion_tokens": round(n_tok / len(encs), 1),
        }
        return StepOut(loss_sum / max(n_tok, 1), tokens, record=record)

    def step_line(self, out: StepOut, state: State, total: int, speed: float, step_s: float) -> str:
        r = out.record
        graders = ", ".join(f"{k[7:]} {v:.3f}" for k, v in r.items() if k.startswith("reward_"))
        return (
            f"step {state.step}/{total}: reward {r['reward']:.3f} ({graders}), kl {r['kl']:.4f}, "
            f"{r['completion_tokens']:.0f} tokens/completion, {step_s:.0f}s"
        )

    def evaluate(self) -> dict:
        return grpo_eval(self.model, self.tok, self.val, self.graders, self.cfg, self.val_rows)

    def start_line(self, rec: dict) -> str:
        return f"held-out before training: reward {rec['val_reward']:.3f} " + ", ".join(
            f"{k[4:]} {v:.3f}" for k, v in rec.items() if k != "val_reward"
        )

    def val_line(self, rec: dict, state: State, mark: str) -> str:
        return f"epoch {rec['epoch']}: held-out reward {rec['val_reward']:.3f}{mark}"

    def end(self) -> None:
        if self.has_ref:
            self.model.delete_adapter("reference")
