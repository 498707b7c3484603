"""A registry with one run of every kind and status, made by the real commands on a tiny model: what
tests/test_ui_pages.py opens page by page (the web app's pages broke once on a kind no test had made).

Kinds: train (LoRA with validation and checkpoints, full, DoRA, prompt and prefix tuning, DPO, GRPO, a
multi-task mix, sequential from an adapter, two sweep trials, a classifier), eval (one system against a
baseline, two systems with a verdict, a gate, a classifier against its majority baseline), merge, export
(GGUF). Statuses: done, running (this process), failed,
interrupted (a training SIGKILLed at its first checkpoint), and the bad cases a page must put in words: a
run folder deleted after it was registered, an eval from an older version (no examples, no ci).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import chat, cli, run_cli, toy_examples, write_jsonl
from tunesmith.registry.db import Registry, new_id
from tunesmith.train.rundir import partial_dir

TRAIN = ["--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--quiet", "--threads", "1"]


def pref_rows(n: int, offset: int = 0) -> list[dict]:
    topics = "budget design remote battery case prototype".split()
    return [
        {
            "prompt": f"Write the meeting notes. Focus: {topics[i % 6]} {i}",
            "chosen": f"Meeting Summary: The team discussed the {topics[i % 6]}.",
            "rejected": f"{topics[i % 6]} ok? ! {i}",
        }
        for i in range(offset, offset + n)
    ]


def ok(r) -> None:
    assert r.returncode == 0, r.stderr[-2000:]


def build(root: Path, model: str) -> str:
    """Every kind and status in `root/reg.db`; returns its path. About a minute on 2 cores."""
    reg = str(root / "reg.db")
    d = root / "data"
    write_jsonl(d / "train.jsonl", toy_examples(8))
    write_jsonl(d / "val.jsonl", toy_examples(2, seed=1))
    test = write_jsonl(root / "test.jsonl", toy_examples(3, seed=2))
    common = ["--model", model, "--registry", reg, *TRAIN]
    ok(cli("train", *common, "--data", str(d), "--out", str(root / "lora"), "--eval-every-steps", "1",
           "--save-every", "1"))  # fmt: skip
    for method in ("full", "dora", "prompt-tuning", "prefix-tuning"):
        ok(cli("train", *common, "--method", method, "--data", str(d / "train.jsonl"), "--out",
               str(root / method)))  # fmt: skip
    ok(cli("train", *common, "--data", str(d / "train.jsonl"), "--out", str(root / "v2"), "--from-adapter",
           str(root / "lora")))  # fmt: skip
    write_jsonl(root / "prefs" / "train.jsonl", pref_rows(8))
    write_jsonl(root / "prefs" / "val.jsonl", pref_rows(2, offset=50))
    ok(cli("train", *common, "--method", "dpo", "--allow-few-pairs", "--data", str(root / "prefs"), "--out",
           str(root / "dpo")))  # fmt: skip
    write_jsonl(root / "prompts.jsonl", [chat(f"Say something about {w}", "ok") for w in "abcd"])
    grpo = ["--method", "grpo", "--graders", "length:5", "--grpo-group", "2", "--grpo-max-new-tokens", "4"]
    ok(cli("train", *common, *grpo, "--data", str(root / "prompts.jsonl"), "--out", str(root / "grpo")))
    said = ("the team is bad", "the budget is good")
    labelled = [{"text": f"{said[i % 2]} {i}", "label": ("no", "yes")[i % 2]} for i in range(12)]
    write_jsonl(root / "labels.jsonl", labelled)
    ok(cli("train", *common, "--task", "classify", "--data", str(root / "labels.jsonl"), "--out",
           str(root / "classifier")))  # fmt: skip
    write_jsonl(root / "other.jsonl", [chat(f"Title for {w}", f"About {w}") for w in "abcdefgh"])
    sets = [
        f"{{path: {d / 'train.jsonl'}, task: notes}}",
        f"{{path: {root / 'other.jsonl'}, task: titles, weight: 0.5}}",
    ]
    (root / "mix.yaml").write_text("datasets:\n" + "".join(f"  - {x}\n" for x in sets))
    ok(cli("train", *common, "--data", str(root / "mix.yaml"), "--out", str(root / "multitask")))
    ok(cli("sweep", "--model", model, "--registry", reg, "--data", str(d), "--out", str(root / "sweep"),
           "--space", "lr=1e-3|1e-2", "--trials", "2", *TRAIN[:-3], "--threads", "1"))  # fmt: skip
    evals(root, reg, model, test)
    ok(cli("merge", "--adapter", str(root / "lora"), "--out", str(root / "merged"), "--registry", reg))
    ok(cli("export", "--model", str(root / "merged"), "--quant", "f32", "--out", str(root / "m.gguf"),
           "--registry", reg))  # fmt: skip
    statuses(root, reg, common, d)
    return reg


def evals(root: Path, reg: str, model: str, test: Path) -> None:
    flags = ["--data", str(test), "--max-new-tokens", "4", "--registry", reg, "--quiet"]
    ok(cli("eval", "--model", model, *flags, "--out", str(root / "e-base")))
    ok(cli("eval", "--adapter", str(root / "lora"), *flags, "--out", str(root / "e-lora"), "--baseline",
           str(root / "e-base" / "results.json")))  # fmt: skip
    ok(cli("eval", "--adapter", str(root / "v2"), "--systems", "base,tuned", *flags, "--out",
           str(root / "e-both")))  # fmt: skip
    ok(cli("eval", "--adapter", str(root / "classifier"), "--data", str(root / "labels.jsonl"), "--systems",
           "majority,tuned", "--registry", reg, "--out", str(root / "e-classifier")))  # fmt: skip
    gated = cli("eval", "--adapter", str(root / "v2"), *flags, "--out", str(root / "e-gate"), "--gate",
                str(root / "e-lora"))  # fmt: skip
    assert gated.returncode in (0, 3), gated.stderr  # passed, or the gate's own failure code


def statuses(root: Path, reg: str, common: list[str], d: Path) -> None:
    """running, failed, interrupted; a deleted folder; an eval from an older version."""

    r = run_cli("train", *common, "--data", str(d / "train.jsonl"), "--out", str(root / "killed"),
                env={"TUNESMITH_TEST_KILL_AT": "checkpoint.saved"})  # fmt: skip
    assert r.returncode != 0
    ok(cli("train", *common, "--data", str(d / "train.jsonl"), "--out", str(root / "gone")))
    shutil.rmtree(root / "gone")
    registry = Registry(reg)
    # what a run has written after its first step, in the folder it lives in until it finishes
    partial_dir(root / "live").mkdir()
    (partial_dir(root / "live") / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
    for name, status in (("live", "running"), ("broken", "failed")):
        run_id = registry.begin(new_id(), kind="train", name=name, path=str(root / name), method="lora",
                                model="tiny", config={"method": "lora", "epochs": 1})  # fmt: skip
        if status == "failed":
            registry.end(run_id, "failed", error="CUDA out of memory. Tried to allocate 2.00 GiB")
    registry.add(kind="eval", name="old-eval", path=str(root / "old-eval"), model="tiny",
                 config={"data": str(d / "val.jsonl")}, data=[], parents=[], metrics=[],
                 result={"system": "tuned", "metrics": {"rougeL": 12.5}},
                 headline=("rougeL", 12.5))  # fmt: skip
    registry.close()
