"""Training on tiny in-process models: loss goes down, runs are reproducible, batches are
normalized over answer tokens, the adapter loads with plain PEFT, runs are never lost."""

import json
from pathlib import Path

import pytest
import torch

from conftest import FAMILIES, cli, run_cli, toy_examples, write_jsonl
from tunesmith.errors import UserError
from tunesmith.train import batching, heap, precision, setup, trainer
from tunesmith.train import loss as L2
from tunesmith.train.config import TrainConfig
from tunesmith.train.run import Run

# what is special to bf16 training on a CPU (bf16 base under autocast, attention, recomputed norms)
cpu_bf16 = pytest.mark.skipif(
    torch.cuda.is_available(), reason="tests the CPU bf16 path; this machine trains on a GPU"
)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(16))
    write_jsonl(d / "val.jsonl", toy_examples(4, seed=1))
    return d


def losses(run: Path) -> list[float]:
    return [
        r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]


def cfg_for(model_dir, data_dir, out, **kw) -> TrainConfig:
    base = dict(
        model=str(model_dir),
        data=str(data_dir),
        out=str(out),
        epochs=2,
        lr=5e-3,
        batch_size=4,
        micro_batch_size=2,
        lora_r=8,
        lora_alpha=16,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_and_val_loss_drops(family, tiny_model_dir, data_dir, tmp_path):
    r = trainer.train(
        cfg_for(tiny_model_dir(family), data_dir, tmp_path / "run", epochs=3, lr=1e-2), quiet=True
    )
    # val_loss_start: the validation loss of the untouched model, measured before the first step
    assert r.val_losses[-1] < r.val_loss_start - 0.05, (r.val_loss_start, r.val_losses)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_in_bf16_on_a_cpu(family, tiny_model_dir, data_dir, tmp_path):
    """The CPU bf16 path (bf16 base, multiplied-out attention, bucketed batches) for every family:
    Gemma 3's sliding-window layers and Phi-3's fused projections included."""
    r = trainer.train(
        cfg_for(tiny_model_dir(family), data_dir, tmp_path / "run", micro_batch_size=1, precision="bf16"),
        quiet=True,
    )
    assert r.val_losses[-1] < r.val_loss_start, (r.val_loss_start, r.val_losses)


def test_adapter_loads_with_plain_peft_and_changes_output(tiny_model_dir, data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir("llama")
    trainer.train(cfg_for(model_dir, data_dir, tmp_path / "run"), quiet=True)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, tmp_path / "run").eval()(ids).logits
    assert not torch.allclose(plain, tuned, atol=1e-4), "a trained adapter must change the output"
    cfg = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8
    assert not list((tmp_path / "run").glob("*.bin")), "weights are safetensors only"


def test_same_seed_same_losses(tiny_model_dir, data_dir, tmp_path):
    m = tiny_model_dir("llama")
    trainer.train(cfg_for(m, data_dir, tmp_path / "a"), quiet=True)
    trainer.train(cfg_for(m, data_dir, tmp_path / "b"), quiet=True)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    trainer.train(cfg_for(m, data_dir, tmp_path / "c", seed=7), quiet=True)
    assert losses(tmp_path / "c") != a


def test_batch_8_equals_batch_4_times_accumulation_2(tiny_model_dir, tmp_path):
    d = tmp_path / "data"
    # very different answer lengths: a per-micro-batch mean would weigh them differently
    rows = toy_examples(16)
    for i, r in enumerate(rows):
        r["messages"][1]["content"] += " extra words here" * (i % 5) * 3
    write_jsonl(d / "train.jsonl", rows)
    m = tiny_model_dir("llama")
    kw = dict(epochs=1, batch_size=8, lora_dropout=0.0, precision="fp32")
    trainer.train(cfg_for(m, d, tmp_path / "one", micro_batch_size=8, **kw), quiet=True)
    trainer.train(cfg_for(m, d, tmp_path / "acc", micro_batch_size=4, **kw), quiet=True)
    # auto: 1 on a CPU, 4 on a GPU
    trainer.train(cfg_for(m, d, tmp_path / "auto", micro_batch_size=0, **kw), quiet=True)
    one, acc, auto = losses(tmp_path / "one"), losses(tmp_path / "acc"), losses(tmp_path / "auto")
    assert len(one) == 2
    assert max(abs(x - y) for x, y in zip(one, acc)) < 1e-4, (one, acc)
    assert max(abs(x - y) for x, y in zip(one, auto)) < 1e-4, (one, auto)
    assert (
        f"micro_batch_size: {4 if torch.cuda.is_available() else 1}\n"
        in (tmp_path / "auto" / "config.yaml").read_text()
    )


def test_existing_run_is_refused_and_kept_on_failed_overwrite(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    m = tiny_model_dir("llama")
    run = tmp_path / "run"
    trainer.train(cfg_for(m, data_dir, run), quiet=True)
    before = (run / "adapter_model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a run; choose a new --out, or pass --overwrite"):
        trainer.train(cfg_for(m, data_dir, run), quiet=True)

    def crash(*a, **k):
        raise RuntimeError("simulated crash mid-training")

    monkeypatch.setattr(Run, "fit", crash)
    with pytest.raises(RuntimeError):
        trainer.train(cfg_for(m, data_dir, run), overwrite=True, quiet=True)
    assert (run / "adapter_model.safetensors").read_bytes() == before
    # the unfinished run is kept aside, to resume; nothing else is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.partial", "data", "run"]
    with pytest.raises(
        UserError,
        match=r"an unfinished run is in .*\.run\.partial; continue it with `tunesmith train --resume",
    ):
        trainer.train(cfg_for(m, data_dir, run), overwrite=True, quiet=True)


def test_config_file_unknown_key_names_closest(tmp_path, data_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nlearning_rate: 0.1\n")
    r = cli("train", "--config", str(cfg), "--data", str(data_dir), "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    assert r.stderr == f"error: {cfg}: unknown key 'learning_rate'; did you mean 'lr'?\n"
    cfg.write_text("epochs: 2\nlr: 0.1\n")
    r = cli("train", "--config", str(cfg), "--lr", "0.5", "--print-config")
    assert r.returncode == 0
    assert "epochs: 2\n" in r.stdout and "lr: 0.5\n" in r.stdout and "model: smollm2-135m\n" in r.stdout


def test_bad_flags_are_one_line(tmp_path, data_dir):
    r = cli(
        "train",
        "--data",
        str(data_dir),
        "--out",
        str(tmp_path / "r"),
        "--batch-size",
        "6",
        "--micro-batch-size",
        "4",
    )
    assert r.stderr == "error: --batch-size 6 must be a multiple of --micro-batch-size 4\n"
    r = cli("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert r.stderr == f"error: --data {tmp_path / 'missing'}: no such file or directory\n"


def _losses_and_vals(run: Path):
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r], [
        r["val_loss"] for r in recs if "val_loss" in r and r["step"] > 0
    ]


def test_sigkill_at_a_random_step_then_resume_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    import random
    import signal

    from conftest import train_then_sigkill

    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(64))
    write_jsonl(d / "val.jsonl", toy_examples(4, seed=1))
    args = [
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(d),
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--micro-batch-size",
        "1",
        "--lr",
        "3e-3",
        "--save-every",
        "1",
        "--threads",
        "1",
        "--quiet",
    ]
    ref = cli("train", *args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    kill_at = random.Random().randint(10, 80)
    run = tmp_path / "run"
    assert train_then_sigkill(args, run, kill_at) == -signal.SIGKILL, (
        "the run must be killed mid-training for this test"
    )
    assert not run.exists()
    r = cli("train", "--resume", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    (ref_losses, ref_vals), (losses, vals) = _losses_and_vals(tmp_path / "ref"), _losses_and_vals(run)
    assert len(losses) == len(ref_losses) == 96
    assert abs(losses[-1] - ref_losses[-1]) < 1e-4 and max(abs(a - b) for a, b in zip(vals, ref_vals)) < 1e-4
    assert not (tmp_path / ".run.partial").exists()
    r = cli("train", "--resume", str(run))
    assert r.stderr == f"error: --resume {run}: that run already finished\n"
    r = cli("train", "--resume", str(run), "--lr", "0.1")
    assert r.stderr == "error: --resume continues with the run's saved config; drop --lr\n"


def test_checkpoints_are_safetensors_and_pruned(tiny_model_dir, data_dir, tmp_path):
    trainer.train(
        cfg_for(tiny_model_dir("llama"), data_dir, tmp_path / "run", save_every=1, keep_checkpoints=2),
        quiet=True,
    )
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-0000007", "step-0000008"]
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / ckpts[-1]).iterdir())
    assert files == ["state.json", "state.safetensors"]
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "run" / "checkpoints" / ckpts[-1] / "state.safetensors"))
    assert any(k.startswith("opt.") and k.endswith("exp_avg_sq") for k in keys) and "rng.torch" in keys


def test_early_stopping_keeps_and_marks_the_best_adapter(tiny_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    # a learning rate far too high: the validation loss soon gets worse, and patience runs out
    r = trainer.train(
        cfg_for(
            tiny_model_dir("llama"),
            data_dir,
            tmp_path / "run",
            epochs=20,
            lr=0.5,
            eval_every_steps=1,
            patience=2,
            warmup_ratio=0.0,
            scheduler="constant",
        ),
        quiet=True,
    )
    assert r.early_stopped and r.steps < 80 and r.best["step"] < r.steps
    vals = _losses_and_vals(tmp_path / "run")[1]
    assert r.best["val_loss"] == pytest.approx(min(vals), abs=1e-6)
    run = tmp_path / "run"
    root, best = (
        load_file(str(run / "adapter_model.safetensors")),
        load_file(str(run / "best" / "adapter_model.safetensors")),
    )
    assert root.keys() == best.keys() and all(torch.equal(root[k], best[k]) for k in root)
    info = json.loads((run / "tunesmith-run.json").read_text())
    assert info["adapter"] == "best" and info["result"]["best"]["step"] == r.best["step"]


@pytest.mark.parametrize("method", ["lora", "dora", "full", "freeze", "prompt-tuning", "prefix-tuning"])
def test_every_method_lowers_val_loss_and_loads_without_tunesmith(method, tiny_model_dir, data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = tiny_model_dir("llama")
    lr = {"full": 1e-3, "freeze": 3e-3, "prompt-tuning": 0.3, "prefix-tuning": 3e-2}.get(method, 1e-2)
    cfg = cfg_for(
        base_dir,
        data_dir,
        tmp_path / "run",
        method=method,
        epochs=3,
        lr=lr,
        freeze_layers=1,
        virtual_tokens=4,
    )
    r = trainer.train(cfg, quiet=True)
    assert r.val_losses[-1] < r.val_loss_start - 0.01, (r.val_loss_start, r.val_losses)
    run = tmp_path / "run"
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    if method in ("full", "freeze"):
        tuned = AutoModelForCausalLM.from_pretrained(run).eval()  # a plain model directory
        changed = {
            n for n, p in tuned.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])
        }
        if method == "freeze":  # only the last layer (of 2) was trained
            assert changed and all(".layers.1." in n for n in changed), changed
    else:
        assert (
            json.loads((run / "adapter_config.json").read_text())["peft_type"]
            == {
                "lora": "LORA",
                "dora": "LORA",
                "prompt-tuning": "PROMPT_TUNING",
                "prefix-tuning": "PREFIX_TUNING",
            }[method]
        )
        tuned = PeftModel.from_pretrained(base, run).eval()
    with torch.no_grad():
        assert tuned(ids).logits.shape[-1] == base.config.vocab_size


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU --method qlora runs")
def test_qlora_on_a_cpu_says_why_and_what_instead(tiny_model_dir, data_dir, tmp_path):
    r = cli(
        "train",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(data_dir),
        "--out",
        str(tmp_path / "r"),
        "--method",
        "qlora",
    )
    assert r.returncode == 2
    assert r.stderr == (
        "error: --method qlora quantizes the base model to 4 bits with bitsandbytes, which needs a CUDA GPU; "
        "on this machine use --method lora (the same adapter, on an unquantized base)\n"
    )
    r = cli("eval", "--adapter", str(tiny_model_dir("llama")), "--data", str(data_dir / "val.jsonl"))
    assert r.stderr.endswith(
        "holds a whole model (method full or freeze), not an adapter; "
        f"use --model {tiny_model_dir('llama')}\n"
    )


def test_eos_is_learned_so_the_tuned_model_stops_by_itself(tiny_model_dir, tmp_path):
    from conftest import chat
    from tunesmith.models.loading import generate, load

    d = tmp_path / "data"
    rows = [
        chat(f"Notes on the {w}.", f"Meeting Summary: The team discussed the {w}.")
        for w in ("budget", "design", "battery", "marketing")
    ]
    write_jsonl(d / "train.jsonl", rows)
    m = tiny_model_dir("llama")
    base = load(str(m), quiet=True)
    prompts = [r["messages"][:1] for r in rows]
    assert not any(g.stopped for g in generate(base.model, base.tokenizer, prompts, max_new_tokens=40))
    # a random 2-layer model needs all its weights to memorize; the mask and EOS are the same for every method
    trainer.train(
        cfg_for(
            m,
            d,
            tmp_path / "run",
            method="full",
            epochs=80,
            lr=3e-3,
            batch_size=4,
            micro_batch_size=4,
            warmup_ratio=0.0,
            scheduler="constant",
        ),
        quiet=True,
    )
    tuned = load(str(tmp_path / "run"), quiet=True)
    outs = generate(tuned.model, tuned.tokenizer, prompts, max_new_tokens=40)
    assert all(g.stopped for g in outs), [g.text for g in outs]
    assert [g.text for g in outs] == [r["messages"][1]["content"] for r in rows]


def test_from_adapter_continues_training_sequentially(tiny_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    m = tiny_model_dir("llama")
    first = trainer.train(cfg_for(m, data_dir, tmp_path / "first"), quiet=True)
    second = trainer.train(
        cfg_for(tiny_model_dir("llama"), data_dir, tmp_path / "second", from_adapter=str(tmp_path / "first")),
        quiet=True,
    )
    # it starts where the first run ended, not from a fresh adapter
    assert second.val_loss_start == pytest.approx(first.best["val_loss"], abs=1e-5)
    assert second.val_losses[-1] < second.val_loss_start
    a = load_file(str(tmp_path / "first" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "second" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(
        UserError, match=r"a LORA adapter cannot continue as --method prompt-tuning \(PROMPT_TUNING\)"
    ):
        trainer.train(
            cfg_for(
                m, data_dir, tmp_path / "third", method="prompt-tuning", from_adapter=str(tmp_path / "first")
            ),
            quiet=True,
        )


@pytest.mark.parametrize(
    "engine", [[], ["--fsdp"], ["--fsdp", "--method", "full"]], ids=["ddp", "fsdp", "fsdp-full"]
)
def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir, data_dir, tmp_path, engine):
    """torchrun, 2 CPU processes (gloo), DDP or FSDP2: the same loss curve as 1 process, within
    tolerance, and the same weights saved (FSDP gathers its shards into a plain directory)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from conftest import ROOT

    method = engine[engine.index("--method") + 1] if "--method" in engine else "lora"
    args = [
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(data_dir),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "1",
        "--lr",
        "5e-3" if method == "lora" else "1e-3",
        "--lora-r",
        "8",
        "--quiet",
        "--threads",
        "1",
        "--method",
        method,
    ]
    one = cli("train", *args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    flags = [f for f in engine if f == "--fsdp"]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "tunesmith.cli",
            "train",
            *args,
            *flags,
            "--out",
            str(tmp_path / "two"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    info = json.loads((tmp_path / "two" / "tunesmith-run.json").read_text())
    assert (info["engine"], info["processes"]) == ("fsdp" if flags else "ddp", 2)
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    w1, w2 = load_file(str(tmp_path / "one" / weights)), load_file(str(tmp_path / "two" / weights))
    assert w1.keys() == w2.keys() and max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    (l1, v1), (l2, v2) = _losses_and_vals(tmp_path / "one"), _losses_and_vals(tmp_path / "two")
    assert len(l1) == len(l2) == 8 and len(v1) == len(v2) == 2
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-4, (l1, l2)
    assert max(abs(a - b) for a, b in zip(v1, v2)) < 1e-4, (v1, v2)
    tokens1 = [
        json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    tokens2 = [
        json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    assert [r["tokens"] for r in tokens1] == [r["tokens"] for r in tokens2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "one", "two"]


def test_gradient_checkpointing_and_low_memory_give_the_same_losses(tiny_model_dir, data_dir, tmp_path):
    m = tiny_model_dir("llama")
    trainer.train(cfg_for(m, data_dir, tmp_path / "plain", epochs=1), quiet=True)
    trainer.train(cfg_for(m, data_dir, tmp_path / "gc", epochs=1, gradient_checkpointing=True), quiet=True)
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "gc")
    assert len(a) == 4 and max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    if not heap.available():
        return
    # --low-memory changes the allocator of the whole process: a process of its own
    r = run_cli(
        "train", "--model", str(m), "--data", str(data_dir), "--out", str(tmp_path / "low"), "--epochs", "1",
        "--lr", "5e-3", "--batch-size", "4", "--micro-batch-size", "2", "--lora-r", "8", "--lora-alpha", "16",
        "--low-memory", "--quiet", "--registry", "off",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "low_memory: true" in (tmp_path / "low" / "config.yaml").read_text()
    assert max(abs(x - y) for x, y in zip(a, losses(tmp_path / "low"))) < 1e-5


@pytest.mark.skipif(not heap.available(), reason="--low-memory tunes glibc's allocator")
def test_low_memory_hands_freed_memory_back_at_once():
    """glibc keeps a big block it freed once the first one of its size has been freed (its threshold for
    own pages rises); after heap.lean() every block of 1 MiB and more goes back when freed."""
    import subprocess
    import sys

    code = """
import sys
from tunesmith.train import heap
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
if sys.argv[1] == "lean":
    assert heap.lean()
blob = b"x" * (16 << 20)
del blob
before = rss()
blob = b"y" * (16 << 20)
during = rss() - before
del blob
print(during >> 20, (rss() - before) >> 20)
"""
    kept = {}
    for mode in ("default", "lean"):
        r = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
        during, after = map(int, r.stdout.split())
        assert during >= 15, mode
        kept[mode] = after
    assert kept["default"] >= 15 and kept["lean"] <= 1, kept


def test_precision_rslora_and_full_disk(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    m = tiny_model_dir("llama")
    r = trainer.train(
        cfg_for(m, data_dir, tmp_path / "bf16", epochs=1, precision="bf16", rslora=True), quiet=True
    )
    assert r.steps == 4 and r.val_losses[-1] < r.val_loss_start
    assert json.loads((tmp_path / "bf16" / "adapter_config.json").read_text())["use_rslora"] is True
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 << 30, 10 << 30, 5 << 20))
    with pytest.raises(
        UserError, match=r"--out .*full: only 5 MB free on that disk; a full run needs about 2048 MB"
    ):
        trainer.train(cfg_for(m, data_dir, tmp_path / "full", method="full"), quiet=True)


def test_eval_metric_during_training_picks_the_best_score(tiny_model_dir, data_dir, tmp_path):
    from tunesmith.models.loading import generate, load
    from tunesmith.scoring.metrics import scores

    r = trainer.train(
        cfg_for(
            tiny_model_dir("llama"),
            data_dir,
            tmp_path / "run",
            epochs=2,
            lr=5e-2,
            eval_metric="rougeL",
            eval_limit=4,
            eval_max_new_tokens=24,
        ),
        quiet=True,
    )
    vals = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "val_loss" in line
    ]
    assert [v["step"] for v in vals] == [0, 4, 8] and all("val_rougeL" in v for v in vals)
    best = max(vals[1:], key=lambda v: v["val_rougeL"])  # the first best wins a tie
    assert r.best["step"] == best["step"] and r.best["val_rougeL"] == best["val_rougeL"]
    assert vals[-1]["val_rougeL"] > vals[0]["val_rougeL"]  # the tiny model learns the notes' wording
    # the logged score is what eval computes with the saved (best) adapter
    from tunesmith.data.formats import load_examples
    from tunesmith.eval.run import split_prompt

    loaded = load(str(tiny_model_dir("llama")), tmp_path / "run", quiet=True)
    prompts, refs = zip(*(split_prompt(ex.messages) for ex in load_examples(str(data_dir / "val.jsonl"))[:4]))
    outs = generate(loaded.model, loaded.tokenizer, list(prompts), max_new_tokens=24)
    mean = sum(scores(o.text, ref)["rougeL"] for o, ref in zip(outs, refs)) / 4
    assert mean == pytest.approx(best["val_rougeL"], abs=0.01)
    with pytest.raises(UserError, match="--eval-metric 'rouge': choose from rouge1, rouge2, rougeL"):
        cfg_for(tiny_model_dir("llama"), data_dir, tmp_path / "x", eval_metric="rouge").validate()


def test_tensorboard_gets_every_logged_metric(tiny_model_dir, data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    trainer.train(
        cfg_for(tiny_model_dir("llama"), data_dir, tmp_path / "run", tensorboard=str(tb)), quiet=True
    )
    logged = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tb))
    events.Reload()
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "val_loss"} <= set(events.Tags()["scalars"])
    want = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    got = [(e.step, e.value) for e in events.Scalars("loss")]
    assert len(got) == len(want) == 8
    assert all(a == c and abs(b - d) < 1e-6 for (a, b), (c, d) in zip(got, want))
    assert [e.step for e in events.Scalars("val_loss")] == [r["step"] for r in logged if "val_loss" in r]


@cpu_bf16
@pytest.mark.parametrize("method", ["lora", "dora", "prompt-tuning", "full"])
def test_bf16_on_a_cpu_trains_close_to_fp32(method, tiny_model_dir, data_dir, tmp_path):
    """--precision bf16 on a CPU: bf16 autocast; adapter methods keep the frozen base in bf16 and the
    trainable weights in fp32; the losses follow fp32's."""
    from tunesmith.train import attention, fused_lora

    m = tiny_model_dir("llama")
    lr = {"full": 1e-3, "prompt-tuning": 0.3}.get(method, 5e-3)
    kw = dict(method=method, lr=lr, micro_batch_size=1, virtual_tokens=4)
    trainer.train(cfg_for(m, data_dir, tmp_path / "fp32", precision="fp32", **kw), quiet=True)
    attention._mask.cache_clear()
    fused_lora._function.cache_clear()
    r = trainer.train(cfg_for(m, data_dir, tmp_path / "bf16", precision="bf16", **kw), quiet=True)
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert len(a) == len(b) == 8
    assert a != b  # bf16 really ran
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 0.05, (a, b)
    assert r.val_losses[-1] < r.val_loss_start
    # with a bf16 base, batches went through the multiplied-out attention (prompt tuning's virtual tokens
    # too); full fine-tuning keeps fp32 weights, so its hidden states and attention stay fp32 (SDPA)
    assert (attention._mask.cache_info().currsize > 0) == (method != "full")
    # plain LoRA's layers ran as one function each (train/fused_lora.py); DoRA's as PEFT runs them
    assert (fused_lora._function.cache_info().currsize > 0) == (method == "lora")
    model, _, _ = setup.setup_model(cfg_for(m, data_dir, tmp_path / "x", precision="bf16", **kw))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == (
        set() if method == "full" else {torch.bfloat16}
    )
    from safetensors.torch import load_file

    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    weights = load_file(str(tmp_path / "bf16" / name))
    assert all(t.dtype == torch.float32 for t in weights.values())  # what is saved is fp32


@pytest.mark.parametrize("chunk", [128, 8])
def test_bf16_attention_matches_sdpa_and_leaves_the_rest_to_it(chunk, monkeypatch):
    import torch.nn.functional as F
    import transformers.integrations.sdpa_attention as sdpa

    from tunesmith.train import attention

    monkeypatch.setattr(attention, "CHUNK", chunk)  # 8: 37 positions in 5 blocks, the last one short

    class Layer:  # 4 query heads sharing 2 key/value heads
        num_key_value_groups, is_causal, sliding_window = 2, True, None

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 37, 16), torch.randn(1, 2, 37, 16), torch.randn(1, 2, 37, 16)
    g = torch.randn(1, 37, 4, 16)
    # the reference: fp32 SDPA with each key/value head repeated for its query heads
    q32, k32, v32 = (t.clone().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(
        q32, k32.repeat_interleave(2, 1), v32.repeat_interleave(2, 1), is_causal=True, scale=0.3
    ).transpose(1, 2)
    (ref * g).sum().backward()
    calls = []
    real = sdpa.sdpa_attention_forward
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out, _ = attention.attention(Layer(), qb, kb, vb, None, scaling=0.3)
    (out.float() * g).sum().backward()
    assert calls == [] and out.dtype == torch.bfloat16 and out.shape == (1, 37, 4, 16)
    # the probabilities (2 key/value heads × 74 query rows × 37) are recomputed in the backward pass, not kept
    assert saved and max(s.numel() for s in saved) == 4 * 37 * 16, saved
    assert (out.float() - ref).abs().max() < 0.03
    for mine, want in ((qb, q32), (kb, k32), (vb, v32)):
        assert (mine.grad.float() - want.grad).abs().max() < 0.05 * want.grad.abs().max()
    # fp32, a padding mask, a sliding window: SDPA's job
    attention.attention(Layer(), q, k, v, None, scaling=0.3)
    attention.attention(Layer(), qb, kb, vb, torch.zeros(1, 1, 37, 37, dtype=torch.bfloat16), scaling=0.3)
    window = Layer()
    window.sliding_window = 8
    attention.attention(window, qb, kb, vb, None, scaling=0.3)
    assert len(calls) == 3


@cpu_bf16
@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3"])
def test_bf16_norms_and_mlps_keep_less_for_the_backward_pass(
    family, tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    """Under CPU bf16 every RMS norm keeps its bf16 input, not an fp32 copy, and every gated MLP
    recomputes act(gate) instead of keeping it: the same loss bit for bit (the forward pass is the
    model's own arithmetic) and the same gradients up to bf16 rounding, with less kept."""
    from tunesmith.train import recompute

    cfg = cfg_for(tiny_model_dir(family), data_dir, tmp_path / "x", precision="bf16")

    def run(model):
        ids = torch.tensor([[1, 5, 9, 20, 33, 7, 8, 40, 41, 2]])
        labels = ids.clone()
        labels[:, :4] = -100
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            with precision.amp(precision.autocast_device(cfg), model):
                loss, _ = L2.answer_loss_sum(model, ids, torch.ones_like(ids), labels)
        loss.backward()
        text = model.config.get_text_config()
        fp32 = [
            t
            for t in saved
            if t.dtype == torch.float32
            and t.dim()
            and t.shape[-1] == text.hidden_size
            and t.numel() >= 10 * text.hidden_size
        ]
        wide = {
            t.untyped_storage().data_ptr() for t in saved if t.dim() and t.shape[-1] == text.intermediate_size
        }
        return loss.item(), [p.grad for p in model.parameters() if p.requires_grad], fp32, len(wide)

    model, _, _ = setup.setup_model(cfg)
    layers = model.config.get_text_config().num_hidden_layers
    # 2 norms and the MLP per layer
    assert sum(1 for m in model.modules() if "forward" in vars(m)) >= 3 * layers + 1
    loss, grads, fp32, wide = run(model)
    monkeypatch.setattr(recompute, "apply", lambda model: 0)
    loss_kept, grads_kept, fp32_kept, wide_kept = run(setup.setup_model(cfg)[0])
    assert loss == loss_kept
    diff = max((a - b).abs().max().item() for a, b in zip(grads, grads_kept))
    assert diff <= 0.02 * max(b.abs().max().item() for b in grads_kept), diff
    assert fp32_kept and not fp32
    assert wide == wide_kept - layers  # act(gate) no longer kept, one per layer


def test_blockwise_cross_entropy_matches_the_plain_one(tiny_model_dir, data_dir, tmp_path):
    """loss.py: the output layer's cross-entropy block by block (150 rows: two full blocks and a partial
    one) gives the plain loss and gradient, keeps only [rows × hidden] for the backward pass, and the
    trainer uses it when the output layer is frozen."""
    import torch.nn.functional as F

    from tunesmith.train import loss as L

    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(150, 32), torch.randn(1000, 32) / 4, torch.randint(0, 1000, (150,))
    h_ref, h = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    ref = F.cross_entropy(h_ref @ weight.t(), targets, reduction="sum")
    (ref * 0.37).backward()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        mine = L.linear_cross_entropy_sum(h, weight, targets)
    (mine * 0.37).backward()
    assert abs(mine.item() - ref.item()) < 1e-5 * ref.item()
    assert torch.allclose(h.grad, h_ref.grad, atol=1e-6, rtol=1e-4)
    assert saved == [(150, 32)]
    with torch.no_grad():  # validation: no gradient computed, the same loss
        assert (
            abs(L.linear_cross_entropy_sum(hidden, weight, targets).item() - ref.item()) < 1e-5 * ref.item()
        )
    for method, frozen in (("lora", True), ("prompt-tuning", False), ("full", False)):
        model, _, _ = setup.setup_model(
            cfg_for(tiny_model_dir("llama"), data_dir, tmp_path / method, method=method)
        )
        assert (L2.frozen_output_layer(model) is not None) == frozen, method


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent GPU machine)")
@pytest.mark.parametrize("method", ["lora", "full"])
def test_bf16_on_a_gpu(method, tiny_model_dir, data_dir, tmp_path):
    """bf16 on a GPU: LoRA over a bf16 base with an fp32 adapter; full fine-tuning with fp32 weights under
    bf16 autocast (pure bf16 weights would round the updates away). Both learn; what is saved is fp32."""
    from safetensors.torch import load_file

    m = tiny_model_dir("llama")
    cfg = cfg_for(
        m, data_dir, tmp_path / "run", method=method, precision="bf16", lr=1e-3 if method == "full" else 5e-3
    )
    r = trainer.train(cfg, quiet=True)
    assert r.val_losses[-1] < r.val_loss_start, (r.val_loss_start, r.val_losses)
    model, _, _ = setup.setup_model(cfg)
    assert next(model.parameters()).device.type == "cuda"
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == (
        set() if method == "full" else {torch.bfloat16}
    )
    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    assert all(t.dtype == torch.float32 for t in load_file(str(tmp_path / "run" / name)).values())


def test_fsdp_refusals_say_what_to_do(tiny_model_dir, data_dir, tmp_path):
    m = tiny_model_dir("llama")
    with pytest.raises(
        UserError,
        match=r"--fsdp shards the model across processes, and this is one process: launch with "
        r"`torchrun --nproc_per_node N",
    ):
        trainer.train(cfg_for(m, data_dir, tmp_path / "one", fsdp=True), quiet=True)
    assert not (tmp_path / "one").exists()
    with pytest.raises(
        UserError, match=r"--fsdp works with --method lora, dora, full or freeze, not prompt-tuning"
    ):
        cfg_for(m, data_dir, tmp_path / "p", fsdp=True, method="prompt-tuning").validate()
    with pytest.raises(
        UserError, match=r"--eval-metric generates during training, which --fsdp does not support"
    ):
        cfg_for(m, data_dir, tmp_path / "e", fsdp=True, eval_metric="rougeL").validate()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_bucketed_right_padding_without_a_mask_gives_the_same_loss(family, tiny_model_dir):
    """collate(bucket=64): width rounded up, mask all ones. A causal model never looks right, so the
    loss (and its gradient) at the answer positions is what the exactly padded, masked batch gives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.chat import encode_chat

    d = tiny_model_dir(family)
    model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
    enc = [encode_chat(tok, ex["messages"], "all") for ex in toy_examples(3)]
    for idx in ([0], [1, 2]):
        plain = batching.collate(enc, idx, tok.pad_token_id)
        bucketed = batching.collate(enc, idx, tok.pad_token_id, bucket=64)
        assert (
            bucketed[0].shape[1] % 64 == 0
            and bucketed[0].shape[1] >= plain[0].shape[1]
            and bool(bucketed[1].all())
        )
        (a, n), (b, m) = (L2.answer_loss_sum(model, *batch) for batch in (plain, bucketed))
        assert n == m > 0 and abs(float(a) - float(b)) < 1e-4 * float(a)


def test_auto_micro_batches_fill_a_token_budget_under_cpu_bf16(monkeypatch):
    """--micro-batch-size 0 under CPU bf16: LoRA packs whole examples into one row of up to TOKEN_BUDGET
    tokens; prompt tuning (whose virtual tokens come first) pads examples of similar length into rows,
    up to 1024 padded tokens here (a longer example alone). Every example exactly once. A fixed size
    otherwise."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lengths = [900, 60, 300, 130, 1000, 250, 70, 500, 128, 1024, 10, 600]
    enc = [SimpleNamespace(input_ids=[1] * n) for n in lengths]
    idx = list(range(len(lengths)))
    packed = TrainConfig(precision="bf16", batch_size=12, micro_batch_size=0)
    assert precision.packing(packed) and batching.pass_budget(enc, packed) == precision.TOKEN_BUDGET >= 1024
    rows = batching.micro_batches(enc, idx, packed, precision.TOKEN_BUDGET)
    assert sorted(i for p in rows for i in p) == idx
    assert all(sum(lengths[i] for i in p) <= precision.TOKEN_BUDGET for p in rows)
    assert len(rows) == -(-sum(lengths) // precision.TOKEN_BUDGET)  # as few as the tokens allow, here
    monkeypatch.setattr(precision, "TOKEN_BUDGET", 1024)
    cfg = TrainConfig(precision="bf16", batch_size=12, micro_batch_size=0, method="prompt-tuning")
    assert precision.token_budget(cfg) == 1024 and not precision.packing(cfg)
    assert batching.pass_budget(enc, cfg) == 1024
    passes = batching.micro_batches(enc, idx, cfg, 1024)
    assert sorted(i for p in passes for i in p) == idx
    widths = [max(-(-lengths[i] // 64) * 64 for i in p) for p in passes]
    assert [[lengths[i] for i in p] for p in passes] == [
        [10, 60, 70, 128, 130],
        [250, 300],
        [500],
        [600],
        [900],
        [1000],
        [1024],
    ]
    assert all(w * len(p) <= 1024 for w, p in zip(widths, passes))
    # where the longest example is shorter than the budget, no pass holds more than its padded width
    short = [SimpleNamespace(input_ids=[1] * n) for n in (300, 60, 70, 130)]
    assert batching.pass_budget(short, cfg) == 320
    assert batching.pass_budget(short, packed) == precision.TOKEN_BUDGET  # whole examples: never cut
    assert [
        [len(short[i].input_ids) for i in p] for p in batching.micro_batches(short, [0, 1, 2, 3], cfg, 320)
    ] == [[60, 70], [130], [300]]
    fixed = TrainConfig(precision="bf16", batch_size=12, micro_batch_size=4)
    # a fixed size: as given, in order
    assert batching.pass_budget(enc, fixed) == 0 and batching.micro_batches(enc, idx, fixed, 0) == [
        idx[:4],
        idx[4:8],
        idx[8:],
    ]
    for other in (
        TrainConfig(precision="fp32", micro_batch_size=0),
        TrainConfig(precision="bf16", fsdp=True),
    ):
        assert precision.token_budget(other) == 0
    # a whole epoch: every example once, full steps in random order, the short remainder step last
    many = [SimpleNamespace(input_ids=[1] * (20 + 37 * i % 700)) for i in range(150)]
    for epoch in (1, 2):
        plan = batching.batches(many, TrainConfig(precision="bf16", batch_size=8, micro_batch_size=0), epoch)
        steps = [[i for p in step for i in p] for step in plan]
        assert sorted(i for s in steps for i in s) == list(range(150))
        assert [len(s) for s in steps] == [8] * 18 + [6]
        assert any(len(step) > 1 for step in plan) and any(len(p) > 1 for step in plan for p in step)


@cpu_bf16
def test_auto_micro_batches_under_cpu_bf16_train_like_one_example_per_pass(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Passes of several examples give the step losses of one example per pass: packed into one row
    (LoRA), and right-padded with no mask, no pass holding more padded tokens than the longest example
    alone (prompt tuning)."""
    d = tmp_path / "data"
    rows = toy_examples(16)
    # one long answer
    rows[5]["messages"][1]["content"] += " The budget was agreed after a long discussion." * 12
    write_jsonl(d / "train.jsonl", rows)
    write_jsonl(d / "val.jsonl", toy_examples(4, seed=1))
    m = tiny_model_dir("llama")
    shapes, packed = [], []
    real, real_packed = batching.collate, batching.collate_packed

    def collate(encoded, idx, pad_id, bucket=0):
        out = real(encoded, idx, pad_id, bucket)
        shapes.append(tuple(out[0].shape))
        return out

    def collate_packed(encoded, idx, pad_id, bucket=0):
        out = real_packed(encoded, idx, pad_id, bucket)
        packed.append((len(idx), out[0].shape[1]))
        return out

    monkeypatch.setattr(batching, "collate", collate)
    monkeypatch.setattr(batching, "collate_packed", collate_packed)
    for method in ("lora", "prompt-tuning"):
        kw = dict(
            precision="bf16", lora_dropout=0.0, epochs=1, method=method, lr=5e-3 if method == "lora" else 0.3
        )
        shapes.clear()
        packed.clear()
        trainer.train(cfg_for(m, d, tmp_path / f"one-{method}", micro_batch_size=1, **kw), quiet=True)
        assert {r for r, _ in shapes} == {1} and not packed
        longest = max(w for _, w in shapes)
        assert longest >= 256 and sorted(w for _, w in shapes)[-2] <= 128  # one long example, the rest short
        shapes.clear()
        trainer.train(cfg_for(m, d, tmp_path / f"auto-{method}", micro_batch_size=0, **kw), quiet=True)
        if method == "lora":  # each step's 4 examples (and the validation's) in one row
            assert not shapes and [n for n, _ in packed] == [4] * 6 and max(w for _, w in packed) > longest
        else:
            assert max(r for r, _ in shapes) >= 3  # short examples share a pass
            assert all(r * w <= longest for r, w in shapes), (longest, shapes)
        one, auto = losses(tmp_path / f"one-{method}"), losses(tmp_path / f"auto-{method}")
        assert len(one) == len(auto) == 4
        assert max(abs(x - y) / x for x, y in zip(one, auto)) < 0.01, (method, one, auto)
        assert "micro_batch_size: 0\n" in (tmp_path / f"auto-{method}" / "config.yaml").read_text()


def test_an_explicit_model_is_kept_beside_from_adapter_and_an_unset_one_follows_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tunesmith-run.json").write_text(json.dumps({"model": "gemma3-270m"}))
    assert TrainConfig(from_adapter=str(run)).model == "gemma3-270m"
    assert TrainConfig(model="smollm2-135m", from_adapter=str(run)).model == "smollm2-135m"
    assert TrainConfig().model == "smollm2-135m"
    (run / "tunesmith-run.json").write_text("{")
    with pytest.raises(UserError, match="tunesmith-run.json: damaged .no base model recorded.; pass --model"):
        TrainConfig(from_adapter=str(run))


def test_every_method_has_one_entry_in_the_method_tables():
    """setup's tables say what each --method trains; a method missing from them, or in both, is a bug."""
    from tunesmith.train.config import ADAPTER_METHODS, METHODS

    assert set(setup.ADAPTERS) == set(ADAPTER_METHODS)
    assert set(setup.SELECTIONS) == set(METHODS) - set(ADAPTER_METHODS)
    assert set(trainer.METHODS) <= set(ADAPTER_METHODS)
