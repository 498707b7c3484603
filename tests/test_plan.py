"""`tunesmith plan`: the memory model against what autograd really keeps, exact counts, the machine's
cached speed, and the "will not fit" path (message, exit code, nothing loaded or written)."""

from __future__ import annotations

import json

import pytest

from conftest import cli, toy_examples, write_jsonl
from tunesmith.train import machine, plan
from tunesmith.train.config import TrainConfig


def saved_bytes(cfg: TrainConfig, tokens: int) -> int:
    """Bytes autograd keeps for the backward pass of one `tokens`-token pass of the run's real model
    (half of it answer), weights not counted: what plan.activation_bytes predicts."""
    import torch

    from tunesmith.train.loss import answer_loss_sum
    from tunesmith.train.precision import amp, autocast_device
    from tunesmith.train.setup import setup_model

    model, _, _ = setup_model(cfg)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(3, 100, (1, tokens))
    labels = ids.clone()
    labels[:, : tokens // 2] = -100
    with amp(autocast_device(cfg), model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        answer_loss_sum(model, ids, torch.ones_like(ids), labels)
    return sum(saved.values())


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "phi3"])
@pytest.mark.parametrize("method,precision", [("lora", "fp32"), ("full", "fp32"), ("lora", "bf16")])
def test_activations_predicted_within_a_third_of_what_autograd_keeps(
    tiny_model_dir, family, method, precision
):
    # every family's layout: Llama's, Qwen3's q/k norms, Gemma 3's four norms, GELU and sliding window,
    # Phi-3's fused projections; bf16 takes the CPU's recomputing paths
    cfg = TrainConfig(
        model=str(tiny_model_dir(family)), method=method, precision=precision, data="x", out="y"
    )
    arch = plan.architecture(cfg)
    predicted = plan.activation_bytes(arch, cfg, 512, 256, plan._precision(cfg))
    measured = saved_bytes(cfg, 512)
    assert 0.75 < predicted / measured < 1.33, (predicted, measured)


def test_counts_are_the_runs_own(tiny_model_dir, tmp_path):
    from tunesmith.train.setup import setup_model

    write_jsonl(tmp_path / "d" / "train.jsonl", toy_examples(10))
    for method in ("lora", "full", "freeze", "prompt-tuning"):
        cfg = TrainConfig(
            model=str(tiny_model_dir("llama")), method=method, data=str(tmp_path / "d"), out="y"
        )
        arch = plan.architecture(cfg)
        model, tok, _ = setup_model(cfg)
        assert arch.params == sum(p.numel() for p in model.parameters()), method
        assert arch.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad), method
    data = plan.data_stats(cfg)
    from tunesmith.models.chat import encode_chat

    lengths = [len(encode_chat(tok, ex["messages"]).input_ids) for ex in toy_examples(10)]
    assert data.lengths == lengths and 0 < data.answers < sum(lengths)


def test_plan_prints_its_reasoning_and_json(tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", toy_examples(12))
    args = ["plan", "--model", str(tiny_model_dir("llama")), "--data", str(tmp_path / "d"), "--epochs", "2"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    for word in ("weights", "grads+AdamW", "activations", "runtime", "peak RAM", "fits", "GFLOP/s", "epoch"):
        assert word in r.stdout, word
    r = cli(*args, "--json", "--suggest")
    out = json.loads(r.stdout)
    assert out["fits"] and out["peak_bytes"] == sum(out["parts_bytes"].values())
    assert out["examples"] == 12 and out["steps_per_epoch"] == 2  # 12 examples, batches of 8
    assert out["total_s"] == pytest.approx(2 * out["epoch_s"], rel=0.01)
    changes = {s["change"]: s for s in out["suggestions"]}
    # recomputing the activations keeps less of them and costs time
    gc = changes["--gradient-checkpointing"]
    r = cli(*args, "--method", "dpo")
    assert r.returncode == 2 and "the plan models the SFT methods" in r.stderr
    r = cli(*args, "--method", "qlora")
    assert r.returncode == 2 and "needs a CUDA GPU; plan --method lora here" in r.stderr
    assert gc["parts_bytes"]["activations"] < out["parts_bytes"]["activations"]
    assert gc["tokens_per_s"] < out["tokens_per_s"]
    # --low-memory: glibc hands freed activations back (a lower peak), each new tensor's pages cost time
    low = changes["--low-memory"]
    assert low["parts_bytes"]["activations"] == pytest.approx(
        out["parts_bytes"]["activations"] * plan.LOW_MEMORY_SLACK / plan.SLACK["adapter fp32"], rel=1e-3
    )
    assert low["tokens_per_s"] == pytest.approx(out["tokens_per_s"] / plan.LOW_MEMORY_TIME, rel=1e-3)


def test_a_run_that_will_not_fit_stops_before_loading_with_exit_4(tiny_model_dir, tmp_path, monkeypatch):
    long = toy_examples(1)[0]
    long["messages"][-1]["content"] *= 80  # one example over 256 tokens: a shorter --max-length is offered
    write_jsonl(tmp_path / "d" / "train.jsonl", [*toy_examples(8), long])
    monkeypatch.setattr(machine, "memory_bytes", lambda: (2**18, 2**20))
    common = ["--model", str(tiny_model_dir("llama")), "--data", str(tmp_path / "d")]
    r = cli("plan", *common)
    assert r.returncode == plan.EXIT_WILL_NOT_FIT
    assert "WILL NOT FIT" in r.stdout and "What would fit instead" in r.stdout
    assert "--gradient-checkpointing" in r.stdout and "--max-length" in r.stdout

    loaded = []
    monkeypatch.setattr("tunesmith.train.setup.load_base", lambda *a, **k: loaded.append(1))
    r = cli("train", *common, "--out", str(tmp_path / "run"), "--registry", "off")
    assert r.returncode == 4 and not loaded and not (tmp_path / "run").exists()
    assert r.stderr.strip().splitlines()[-1].startswith("error: the plan predicts a peak of")
    assert "--no-fit-check" in r.stderr and "What would fit instead" in r.stderr
    monkeypatch.undo()
    monkeypatch.setattr(machine, "memory_bytes", lambda: (2**18, 2**20))
    r = cli(
        "train",
        *common,
        "--out",
        str(tmp_path / "run"),
        "--registry",
        "off",
        "--max-steps",
        "1",
        "--no-fit-check",
    )
    assert r.returncode == 0, r.stderr
    assert "plan: peak RAM" in r.stderr and (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_the_matmul_speed_is_measured_once_per_machine_threads_and_precision(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_MACHINE_FILE", str(tmp_path / "machine.json"))
    calls = []
    real = machine.measure_gflops
    monkeypatch.setattr(machine, "measure_gflops", lambda dtype: calls.append(dtype) or real(dtype, 0.05))
    speed, now = machine.matmul_gflops("fp32", 1)
    assert now and speed > 0.1
    assert machine.matmul_gflops("fp32", 1) == (pytest.approx(speed, abs=0.1), False)
    machine.matmul_gflops("fp32", 2)
    machine.matmul_gflops("bf16", 1)
    assert calls == ["fp32", "fp32", "bf16"]
    assert len(json.loads((tmp_path / "machine.json").read_text())) == 3
    (tmp_path / "machine.json").write_text("not json")  # a broken cache is measured around
    assert machine.matmul_gflops("fp32", 1)[1]


def test_an_unset_learning_rate_is_the_methods_default(tmp_path):
    import yaml

    from tunesmith.train.config import DEFAULT_LR

    def lr(*flags: str) -> float:
        r = cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--print-config", *flags)
        assert r.returncode == 0, r.stderr
        return yaml.safe_load(r.stdout)["lr"]

    assert lr() == DEFAULT_LR["lora"] == 1e-3
    assert lr("--method", "full") == 5e-5 and lr("--method", "freeze") == 1e-4
    assert lr("--method", "full", "--lr", "2e-4") == 2e-4
    (tmp_path / "c.yaml").write_text("method: full\nlr: 3.0e-5\n")
    assert lr("--config", str(tmp_path / "c.yaml")) == 3e-5
    (tmp_path / "d.yaml").write_text("method: prompt-tuning\n")
    assert lr("--config", str(tmp_path / "d.yaml")) == 0.3


def test_a_train_tokenizes_its_data_once_for_the_plan_and_the_run(tiny_model_dir, tmp_path, monkeypatch):
    from tunesmith.train import batching

    long = toy_examples(1)[0]
    long["messages"][-1]["content"] *= 80
    write_jsonl(tmp_path / "d" / "train.jsonl", [*toy_examples(6), long])
    write_jsonl(tmp_path / "d" / "val.jsonl", toy_examples(2))
    calls = []
    real = batching.encode_chat
    monkeypatch.setattr(batching, "encode_chat", lambda *a, **k: calls.append(1) or real(*a, **k))
    common = ["--model", str(tiny_model_dir("llama")), "--data", str(tmp_path / "d"), "--max-length", "256"]
    r = cli("train", *common, "--out", str(tmp_path / "run"), "--registry", "off", "--max-steps", "1")
    assert r.returncode == 0, r.stderr
    assert "plan: peak RAM" in r.stderr
    assert len(calls) == 9  # 7 training and 2 validation examples, each through the template once
    assert r.stderr.count("tokens > --max-length 256, dropped") == 1
    assert "training lora on 6 examples (2 validation)" in r.stderr

    calls.clear()  # without a plan (DPO and GRPO have none; torchrun's ranks skip it) the run encodes them
    from tunesmith.train.config import TrainConfig
    from tunesmith.train.sft import Sft

    cfg = TrainConfig(model=str(tiny_model_dir("llama")), data=str(tmp_path / "d"), max_length=256)
    method = Sft(cfg, quiet=True)
    assert len(calls) == 9 and len(method.train_enc) == 6 and len(method.dropped) == 1
