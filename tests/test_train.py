"""Training on tiny in-process models: loss goes down, runs are reproducible, batches are
normalized over answer tokens, the adapter loads with plain PEFT, runs are never lost."""

import json
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, run_cli, toy_examples, write_jsonl

from tunesmith.errors import UserError
from tunesmith.train import lora
from tunesmith.train.config import TrainConfig


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(16))
    write_jsonl(d / "val.jsonl", toy_examples(4, seed=1))
    return d


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def cfg_for(model_dir, data_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=str(data_dir), out=str(out), epochs=2, lr=5e-3, batch_size=4,
                micro_batch_size=2, lora_r=8, lora_alpha=16)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_and_val_loss_drops(family, tiny_model_dir, data_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir(family), data_dir, tmp_path / "run", epochs=3, lr=1e-2)
    model, tok, _ = lora.setup_model(cfg)
    val_enc, _ = lora.encode_all(tok, [type("E", (), {"messages": m["messages"], "path": "", "line": 0})()
                                       for m in toy_examples(4, seed=1)], cfg)
    before = lora.validate(model, val_enc, cfg, tok.pad_token_id)
    r = lora.train(cfg, quiet=True)
    assert r.val_losses[-1] < before - 0.05, (before, r.val_losses)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_adapter_loads_with_plain_peft_and_changes_output(tiny_model_dir, data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir("llama")
    lora.train(cfg_for(model_dir, data_dir, tmp_path / "run"), quiet=True)
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
    lora.train(cfg_for(m, data_dir, tmp_path / "a"), quiet=True)
    lora.train(cfg_for(m, data_dir, tmp_path / "b"), quiet=True)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    lora.train(cfg_for(m, data_dir, tmp_path / "c", seed=7), quiet=True)
    assert losses(tmp_path / "c") != a


def test_batch_8_equals_batch_4_times_accumulation_2(tiny_model_dir, tmp_path):
    d = tmp_path / "data"
    # very different answer lengths: a per-micro-batch mean would weigh them differently
    rows = toy_examples(16)
    for i, r in enumerate(rows):
        r["messages"][1]["content"] += " extra words here" * (i % 5) * 3
    write_jsonl(d / "train.jsonl", rows)
    m = tiny_model_dir("llama")
    kw = dict(epochs=1, batch_size=8, lora_dropout=0.0)
    lora.train(cfg_for(m, d, tmp_path / "one", micro_batch_size=8, **kw), quiet=True)
    lora.train(cfg_for(m, d, tmp_path / "acc", micro_batch_size=4, **kw), quiet=True)
    one, acc = losses(tmp_path / "one"), losses(tmp_path / "acc")
    assert len(one) == 2
    assert max(abs(x - y) for x, y in zip(one, acc)) < 1e-4, (one, acc)


def test_existing_run_is_refused_and_kept_on_failed_overwrite(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    m = tiny_model_dir("llama")
    run = tmp_path / "run"
    lora.train(cfg_for(m, data_dir, run), quiet=True)
    before = (run / "adapter_model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a run; choose a new --out, or pass --overwrite"):
        lora.train(cfg_for(m, data_dir, run), quiet=True)

    def crash(*a, **k):
        raise RuntimeError("simulated crash mid-training")

    monkeypatch.setattr(lora, "fit", crash)
    with pytest.raises(RuntimeError):
        lora.train(cfg_for(m, data_dir, run), overwrite=True, quiet=True)
    assert (run / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"], "no temp dirs left behind"


def test_config_file_unknown_key_names_closest(tmp_path, data_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nlearning_rate: 0.1\n")
    r = run_cli("train", "--config", str(cfg), "--data", str(data_dir), "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    assert r.stderr == f"error: {cfg}: unknown key 'learning_rate'; did you mean 'lr'?\n"
    cfg.write_text("epochs: 2\nlr: 0.1\n")
    r = run_cli("train", "--config", str(cfg), "--lr", "0.5", "--print-config")
    assert r.returncode == 0
    assert "epochs: 2\n" in r.stdout and "lr: 0.5\n" in r.stdout and "model: smollm2-135m\n" in r.stdout


def test_bad_flags_are_one_line(tmp_path, data_dir):
    r = run_cli("train", "--data", str(data_dir), "--out", str(tmp_path / "r"), "--batch-size", "6", "--micro-batch-size", "4")
    assert r.stderr == "error: --batch-size 6 must be a multiple of --micro-batch-size 4\n"
    r = run_cli("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert r.stderr == f"error: --data {tmp_path / 'missing'}: no such file or directory\n"
