"""The run harness (train/run.py) with a toy method: a linear regression that is no language model,
so what is tested is the harness alone: the loop, validation and best tracking in either direction,
early stopping, checkpoints, an exact resume, the log cut back on resume, and the finish."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tunesmith.train.config import TrainConfig
from tunesmith.train.run import Run, State, StepOut


class Toy(torch.nn.Module):
    """y = w·x; saves like a Hugging Face model (safetensors in a folder)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Linear(4, 1, bias=False)

    def save_pretrained(self, folder: str, state_dict=None) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in (state_dict or self.state_dict()).items()},
            f"{folder}/model.safetensors",
        )


class Tok:
    def save_pretrained(self, folder: str) -> None:
        Path(folder, "tokenizer.json").write_text("{}")


class ToyMethod:
    """Fits y = x·[1, 2, 3, 4]; the validation "score" is made to peak at a chosen epoch."""

    bar = False

    def __init__(self, cfg: TrainConfig, *, goal=("val_loss", False), score_by_epoch=None):
        self.cfg, self.model, self.tok, self.model_dir = cfg, Toy(), Tok(), "toy"
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(24, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, 2.0, 3.0, 4.0])
        self.n_items, self.n_val, self.goal = 16, 8, goal
        self.score_by_epoch, self.epoch, self.began = score_by_epoch or {}, 0, []

    def plan(self, epoch: int) -> list:
        order = torch.randperm(self.n_items, generator=torch.Generator().manual_seed(epoch)).tolist()
        self.epoch = epoch
        return [order[i : i + self.cfg.batch_size] for i in range(0, self.n_items, self.cfg.batch_size)]

    def begin(self, state: State, resumed: bool) -> None:
        self.began.append(resumed)
        if not resumed:
            state.extra["note"] = "kept in checkpoints"

    def train_step(self, idx, state: State) -> StepOut:
        loss = ((self.model.w(self.x[idx]).squeeze(1) - self.y[idx]) ** 2).mean()
        loss.backward()
        return StepOut(float(loss.detach()), len(idx) * 10, len(idx), record={"items": len(idx)})

    def step_line(self, out, state, total, speed, step_s) -> str:
        return f"step {state.step}/{total}"

    def evaluate(self) -> dict:
        with torch.no_grad():
            loss = float(((self.model.w(self.x[16:]).squeeze(1) - self.y[16:]) ** 2).mean())
        return {"val_loss": round(loss, 6), "val_score": self.score_by_epoch.get(self.epoch, 0.0)}

    def start_line(self, rec: dict) -> str:
        return f"before: {rec['val_loss']:.3f}"

    def val_line(self, rec: dict, state: State, mark: str) -> str:
        return f"val {rec['val_loss']:.3f}{mark}"

    def epoch_line(self, epoch: int, state: State) -> None:
        return None

    def end(self) -> None:
        pass

    def result(self, st: State, run_dir: Path) -> State:
        return st


def cfg_for(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        model="toy",
        data="d",
        out=str(tmp_path / "out"),
        method="full",
        epochs=4,
        batch_size=4,
        lr=0.3,
        max_grad_norm=0.0,
        warmup_ratio=0.0,
        scheduler="constant",
    )
    return TrainConfig(**{**base, **kw})


def fit(tmp_path: Path, name: str, resume: Path | None = None, **kw):
    cfg = cfg_for(tmp_path, **{k: v for k, v in kw.items() if k not in ("goal", "score_by_epoch")})
    work = tmp_path / name
    work.mkdir(exist_ok=True)
    method = ToyMethod(cfg, **{k: v for k, v in kw.items() if k in ("goal", "score_by_epoch")})
    run = Run(cfg, work, method, quiet=True, resume=resume)
    return run, run.fit(), method


def records(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]


def test_the_loop_logs_every_step_and_validation_and_learns(tmp_path):
    run, st, _ = fit(tmp_path, "w")
    recs = records(tmp_path / "w")
    steps = [r for r in recs if "loss" in r]
    vals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 17)) and st.step == 16
    assert [list(r)[:4] for r in steps[:1]] == [
        ["step", "epoch", "loss", "items"]
    ]  # the method's numbers after loss
    assert [(v["step"], v["epoch"]) for v in vals] == [(0, 0), (4, 1), (8, 2), (12, 3), (16, 4)]
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] / 4
    assert st.start == {k: v for k, v in vals[0].items() if k not in ("step", "epoch")}
    assert st.best["step"] == 16 and st.tokens == 16 * 40 and st.answer_tokens == 16 * 4
    assert st.extra == {"note": "kept in checkpoints"}
    assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) == [
        "step-0000012",
        "step-0000016",
    ]


def test_best_follows_the_goal_direction_and_patience_stops(tmp_path):
    # higher is better: the score peaks in epoch 2, so epochs 3 and 4 are no better; patience 1 stops after 3
    _, st, _ = fit(
        tmp_path, "w", goal=("val_score", True), score_by_epoch={1: 0.2, 2: 0.9, 3: 0.5, 4: 0.95}, patience=1
    )
    assert st.best["step"] == 8 and st.best["val_score"] == 0.9
    assert st.stopped and st.step == 12
    saved = load_file(str(tmp_path / "w" / "best" / "model.safetensors"))
    ckpt = load_file(str(tmp_path / "w" / "checkpoints" / "step-0000012" / "state.safetensors"))
    assert not torch.equal(
        saved["w.weight"], ckpt["param.w.weight"]
    )  # best/ holds step 8's weights, not 12's
    # lower is better (the loss falls every epoch): the last validation is the best
    _, st, _ = fit(tmp_path, "v", goal=("val_loss", False), patience=1)
    assert st.best["step"] == 16 and not st.stopped


def test_resume_from_a_mid_run_checkpoint_ends_exactly_as_an_uninterrupted_run(tmp_path):
    ref_run, ref, _ = fit(tmp_path, "ref", save_every=2, keep_checkpoints=20)
    # the same run as if killed after step 6 (mid-epoch 2): its work dir holds the later log lines and
    # checkpoints too, which the resume must cut back and write again, once
    shutil.copytree(tmp_path / "ref", tmp_path / "cut")
    ckpt = tmp_path / "cut" / "checkpoints" / "step-0000006"
    assert State.from_dict(json.loads((ckpt / "state.json").read_text())["progress"]).step_in_epoch == 2
    run, st, method = fit(tmp_path, "cut", resume=ckpt, save_every=2, keep_checkpoints=20)
    assert method.began == [True] and st.extra == {"note": "kept in checkpoints"}
    assert st.step == ref.step == 16 and st.best == ref.best and st.vals == ref.vals
    assert torch.equal(run.m.model.w.weight, ref_run.m.model.w.weight)
    strip = lambda recs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in recs]
    assert strip(records(tmp_path / "cut")) == strip(records(tmp_path / "ref"))  # nothing twice, nothing lost


def test_finish_writes_the_best_weights_and_swaps_the_run_into_place(tmp_path):
    run, st, _ = fit(
        tmp_path, ".out.partial", goal=("val_score", True), score_by_epoch={1: 0.1, 2: 0.8, 3: 0.3, 4: 0.2}
    )
    out = tmp_path / "out"
    result = run.finish(out, "toy")
    assert result is st and not (tmp_path / ".out.partial").exists()
    info = json.loads((out / "tunesmith-run.json").read_text())
    assert info["adapter"] == "best" and info["result"]["best"]["step"] == 8 and info["method"] == "full"
    final = load_file(str(out / "model.safetensors"))["w.weight"]
    assert torch.equal(final, load_file(str(out / "best" / "model.safetensors"))["w.weight"])
    last = load_file(str(out / "checkpoints" / "step-0000016" / "state.safetensors"))["param.w.weight"]
    assert not torch.equal(final, last)  # step 8's weights, not the last step's


@pytest.mark.parametrize("keep", [1, 3])
def test_checkpoints_are_pruned_to_keep(tmp_path, keep):
    fit(tmp_path, "w", save_every=1, keep_checkpoints=keep)
    assert len(list((tmp_path / "w" / "checkpoints").iterdir())) == keep
