"""--method dpo and --method grpo on tiny models: the loss against hand-computed values, GRPO's
per-group advantages, graders, and short CLI runs that must move the held-out numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import chat, cli, run_cli, write_jsonl
from tunesmith.errors import UserError
from tunesmith.train import dpo, grpo
from tunesmith.train import graders as G
from tunesmith.train import preference as P


def test_dpo_loss_against_a_hand_computed_value():
    # pi_c - ref_c = +1, pi_r - ref_r = -1, beta 0.1: rewards +0.1 / -0.1, loss = -log sigmoid(0.2)
    loss, rc, rr = dpo.dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), 0.1
    )
    assert abs(float(loss) - math.log(1 + math.exp(-0.2))) < 1e-6  # 0.598139
    assert abs(float(loss) - 0.5981389) < 1e-6
    assert abs(float(rc) - 0.1) < 1e-6 and abs(float(rr) + 0.1) < 1e-6
    # equal policy and reference: log 2, whatever beta
    loss, _, _ = dpo.dpo_loss(
        torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-5.0]), torch.tensor([-7.0]), 0.5
    )
    assert abs(float(loss) - math.log(2)) < 1e-6


def test_sequence_logps_equal_the_full_logits_computation(tiny_model_dir):
    """Our answer-only log-probs (output layer at answer positions only) against log_softmax of the
    model's full logits, summed by hand over the answer tokens; then the DPO loss of a real pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.chat import IGNORE, encode_chat

    d = tiny_model_dir("llama")
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    msgs = [{"role": "user", "content": "Write the meeting notes."}]
    chosen = encode_chat(
        tok, msgs + [{"role": "assistant", "content": "Meeting Summary: The team met."}], "last"
    )
    rejected = encode_chat(tok, msgs + [{"role": "assistant", "content": "no"}], "last")

    def by_hand(enc):
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        return sum(float(lp[i, t]) for i, t in enumerate(enc.labels[1:]) if t != IGNORE)

    with torch.no_grad():
        ours = P.sequence_logps(model, [chosen, rejected], tok.pad_token_id).tolist()  # padded batch of two
    want = [by_hand(chosen), by_hand(rejected)]
    assert max(abs(a - b) for a, b in zip(ours, want)) < 1e-4, (ours, want)
    ref = [want[0] + 0.3, want[1] - 0.2]  # a reference that liked chosen less and rejected more
    loss, _, _ = dpo.dpo_loss(
        torch.tensor(ours[:1]), torch.tensor(ours[1:]), torch.tensor(ref[:1]), torch.tensor(ref[1:]), 0.1
    )
    assert abs(float(loss) - math.log(1 + math.exp(-0.1 * (-0.3 - 0.2)))) < 1e-5


def test_group_advantages_are_normalized_within_each_group():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 2.0, 0.0]])
    a = grpo.group_advantages(r)
    assert torch.allclose(a.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(a[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)
    assert torch.equal(a[1], torch.zeros(4))  # every answer equally good: nothing to learn
    assert torch.allclose(a[2].std(unbiased=False), torch.tensor(1.0), atol=1e-3)
    assert a[2].argsort().tolist() == [3, 1, 2, 0]  # order of the rewards kept
    # a group's scale does not matter, only ranks within it
    assert torch.allclose(grpo.group_advantages(r * 100)[2], a[2], atol=1e-3)


def test_graders_parse_weight_and_score(tmp_path):
    style = tmp_path / "style.yaml"
    style.write_text("required:\n  - '^Meeting Summary:'\nmax_words: 5\n")
    g = G.parse_graders("format, length:4*0.5, rougeL*2", style=str(style))
    assert [(x.name, x.weight) for x in g] == [("format", 1.0), ("length:4", 0.5), ("rougeL", 2.0)]
    outs = ["Meeting Summary: the budget.", "some long answer that goes on and on"]
    refs = ["Meeting Summary: the budget.", "an answer"]
    total, means = G.grade(g, [[], []], outs, refs)
    # first: format 2/2 rules, length 4 words of 4 -> 1, rougeL 1.0;
    # second: format 0/2, 8 words -> 0, rougeL 2/10
    assert total == pytest.approx([1 + 0.5 + 2.0, 0 + 0 + 2 * 0.2])
    assert means == pytest.approx({"format": 0.5, "length:4": 0.5, "rougeL": 0.6})


def test_grader_errors_say_what_to_write(tmp_path):
    cases = {
        "": "--method grpo needs --graders",
        "rouge": "--graders 'rouge': unknown grader 'rouge'",
        "rougeL*x": "--graders 'rougeL*x': weight 'x' is not a number (write e.g. rougeL*0.5)",
        "format": "--graders format: needs --style SPEC.yaml",
        "length": "--graders 'length': length needs a target in words, e.g. length:120",
        "python:nosuchmodule_xyz:f": "--graders 'python:nosuchmodule_xyz:f': cannot import nosuchmodule_xyz",
        "python:f": "--graders 'python:f': expected python:MODULE:FUNCTION",
        "judge": "--graders 'judge': needs --rubric FILE",
    }
    for spec, msg in cases.items():
        with pytest.raises(UserError) as e:
            G.parse_graders(spec)
        assert str(e.value).startswith(msg), (spec, str(e.value))


def test_judge_score_parses_the_first_number():
    from tunesmith.scoring.judge import judge_score

    assert judge_score("7") == 0.7
    assert judge_score(" Score: 9/10") == 0.9
    assert judge_score("12") == 1.0 and judge_score("0") == 0.1
    assert judge_score("excellent") == 0.0


# ---------------------------------------------------------------- CLI runs on a tiny model


def pref_rows(n: int, offset: int = 0) -> list[dict]:
    topics = "budget design remote battery case prototype marketing research team meeting".split()
    rows = []
    for i in range(offset, offset + n):
        t = topics[i % len(topics)]
        rows.append(
            {
                "prompt": f"Write the meeting notes. Focus: {t} {i}",
                "chosen": f"Meeting Summary: The team discussed the {t}.",
                "rejected": f"{t} ok? ! fox dog 0123 {t} ?? {i}",
            }
        )
    return rows


def test_dpo_from_the_cli_learns_held_out_preferences(tiny_model_dir, tmp_path):
    d = tmp_path / "prefs"
    write_jsonl(d / "train.jsonl", pref_rows(24))
    write_jsonl(d / "val.jsonl", pref_rows(8, offset=100))
    run = tmp_path / "dpo"
    r = cli(
        "train",
        "--method",
        "dpo",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(d),
        "--out",
        str(run),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--dpo-beta",
        "0.5",
        "--threads",
        "1",
        "--allow-few-pairs",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["method"] == "dpo" and res["steps"] == 18 and res["examples"] == 24
    before, after = res["val_start"], res["val"][-1]
    # policy == reference
    assert before["val_accuracy"] == 0.0 and abs(before["val_loss"] - math.log(2)) < 1e-4
    assert after["val_accuracy"] >= 0.875 and after["val_loss"] < 0.5 * math.log(2), after
    assert after["logp_accuracy"] > before["logp_accuracy"]
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "reward_accuracy", "reward_margin", "tokens_per_s"} <= set(steps[1])
    assert json.loads((run / "tunesmith-run.json").read_text())["method"] == "dpo"
    assert "method: dpo\n" in (run / "config.yaml").read_text()

    # a plain PEFT adapter: what every other command takes
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")), run)
    g = cli("generate", "--adapter", str(run), "--max-new-tokens", "4", "Write the meeting notes.")
    assert g.returncode == 0, g.stderr


def test_dpo_holds_out_pairs_when_there_is_no_val_file_and_continues_an_sft_adapter(tiny_model_dir, tmp_path):
    m = tiny_model_dir("llama")
    sft_data = tmp_path / "sft"
    write_jsonl(sft_data / "train.jsonl", [chat(r["prompt"], r["chosen"]) for r in pref_rows(8)])
    sft = tmp_path / "sft-run"
    assert (
        cli(
            "train",
            "--model",
            str(m),
            "--data",
            str(sft_data),
            "--out",
            str(sft),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--quiet",
        ).returncode
        == 0
    )
    prefs = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(20))
    r = cli(
        "train",
        "--method",
        "dpo",
        "--from-adapter",
        str(sft),
        "--data",
        str(prefs),
        "--out",
        str(tmp_path / "dpo"),
        "--epochs",
        "1",
        "--batch-size",
        "6",
        "--allow-few-pairs",
    )
    assert r.returncode == 0, r.stderr
    assert "no validation file: holding out 2 of 20 pairs (seed 42) to measure on" in r.stderr
    assert "reference: the --from-adapter adapter (log-probs computed once)" in r.stderr
    assert r.stdout.startswith(
        f"saved adapter to {tmp_path / 'dpo'} (dpo, 3 steps, held-out reward accuracy "
    )
    info = json.loads((tmp_path / "dpo" / "tunesmith-run.json").read_text())
    assert info["from_adapter"] == str(sft) and info["model"] == str(m)


def test_preference_methods_refuse_the_wrong_data(tiny_model_dir, tmp_path):
    m = str(tiny_model_dir("llama"))
    chats = write_jsonl(tmp_path / "chat.jsonl", [chat("q", "a")] * 3)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(3))
    r = cli("train", "--method", "dpo", "--model", m, "--data", str(chats), "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert r.stderr == (
        f'error: {chats}:1: --method dpo trains on preference pairs {{"prompt", "chosen", "rejected"}}\n'
    )
    r = cli(
        "train",
        "--method",
        "grpo",
        "--graders",
        "rougeL",
        "--model",
        m,
        "--data",
        str(prefs),
        "--out",
        str(tmp_path / "x"),
    )
    assert r.returncode == 2
    assert r.stderr == (
        f"error: {prefs}:1: --method grpo trains on prompts with a reference answer "
        "(chat or prompt/completion), not preference pairs\n"
    )
    r = cli(
        "train",
        "--method",
        "lora",
        "--graders",
        "rougeL",
        "--model",
        m,
        "--data",
        str(chats),
        "--out",
        str(tmp_path / "x"),
    )
    assert (
        r.stderr
        == "error: --graders, --rubric, --grader-judge and --trust-grader-code are for --method grpo\n"
    )
    r = cli(
        "train",
        "--method",
        "grpo",
        "--grpo-group",
        "1",
        "--graders",
        "rougeL",
        "--model",
        m,
        "--data",
        str(chats),
        "--out",
        str(tmp_path / "x"),
    )
    assert r.stderr.startswith("error: --grpo-group must be at least 2")
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.partial").exists()


GRADER_MODULE = '''
def vowels(prompt, completion, reference):
    """Share of the answer's characters that are vowels (random tiny-model text: ~0.2)."""
    return sum(c in "aeiou" for c in completion) / max(len(completion), 1)
'''


def test_grpo_raises_the_reward_of_a_python_grader_and_continues_from_its_adapter(
    tiny_model_dir, tmp_path, monkeypatch
):
    m = str(tiny_model_dir("llama"))
    (tmp_path / "mygraders.py").write_text(GRADER_MODULE)
    monkeypatch.chdir(tmp_path)  # python:MODULE:FUNCTION imports from the working directory
    rows = [chat(f"Write the meeting notes. Focus: {w} {i}", "ok") for i, w in enumerate("abcdefghijkl")]
    d = tmp_path / "prompts"
    write_jsonl(d / "train.jsonl", rows[:8])
    write_jsonl(d / "val.jsonl", rows[8:])
    run = tmp_path / "grpo"
    args = [
        "--method",
        "grpo",
        "--graders",
        "python:mygraders:vowels",
        "--grpo-group",
        "4",
        "--grpo-max-new-tokens",
        "8",
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--threads",
        "1",
        "--seed",
        "3",
    ]
    r = run_cli(
        "train",
        "--model",
        m,
        "--data",
        str(d),
        "--out",
        str(run),
        "--epochs",
        "6",
        *args,
        "--json",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["method"] == "grpo" and res["steps"] == 12
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(steps) == 12 and all(s["kl"] >= 0 for s in steps)
    assert {"reward", "reward_python:mygraders:vowels", "completion_tokens", "tokens_per_s"} <= set(steps[0])
    first, last = sum(s["reward"] for s in steps[:2]) / 2, sum(s["reward"] for s in steps[-4:]) / 4
    assert last > first + 0.07, [s["reward"] for s in steps]  # measured 0.19 -> 0.31 (sampled answers)
    before, best = res["val_start"]["val_reward"], res["best"]["val_reward"]
    assert best > before + 0.25, (before, res["val"])  # greedy held-out answers: measured 0.0 -> 0.5
    assert steps[0]["kl"] == 0.0  # the first sample comes from the reference itself

    # continue from that adapter: the reference is now that adapter, frozen
    r = run_cli(
        "train",
        "--from-adapter",
        str(run),
        "--data",
        str(d),
        "--out",
        str(tmp_path / "grpo2"),
        "--epochs",
        "1",
        *args,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    first = json.loads((tmp_path / "grpo2" / "metrics.jsonl").read_text().splitlines()[1])
    assert first["kl"] == 0.0  # the reference adapter equals the starting point
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(m), tmp_path / "grpo2")
    assert list(model.peft_config) == ["default"]  # the frozen reference copy is not saved


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_sigkill_then_resume_matches_the_uninterrupted_run(method, tiny_model_dir, tmp_path):
    """A preference run killed with SIGKILL mid-training and resumed ends with the same adapter."""
    import random
    import signal

    from safetensors.torch import load_file

    from conftest import train_then_sigkill

    d = tmp_path / "data"
    if method == "dpo":
        write_jsonl(d / "train.jsonl", pref_rows(24))
        write_jsonl(d / "val.jsonl", pref_rows(4, offset=100))
        extra = ["--dpo-beta", "0.5", "--allow-few-pairs"]
    else:
        rows = [
            chat(f"Write the meeting notes. Focus: {w} {i}", "ok")
            for i, w in enumerate("abcdefghijklmnopqrstuvwx")
        ]
        write_jsonl(d / "train.jsonl", rows[:20])
        write_jsonl(d / "val.jsonl", rows[20:])
        extra = ["--graders", "length:3", "--grpo-group", "2", "--grpo-max-new-tokens", "6"]
    args = [
        "--method",
        method,
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(d),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--save-every",
        "1",
        "--threads",
        "1",
        "--quiet",
        *extra,
    ]
    ref = cli("train", *args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    kill_at = random.Random().randint(3, 12)
    run = tmp_path / "run"
    assert train_then_sigkill(args, run, kill_at) == -signal.SIGKILL, (
        "the run must be killed mid-training for this test"
    )
    r = cli("train", "--resume", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = (
        load_file(str(tmp_path / "ref" / "adapter_model.safetensors")),
        load_file(str(run / "adapter_model.safetensors")),
    )
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    losses = lambda p: [
        json.loads(x)["loss"] for x in (p / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    assert len(losses(run)) == len(losses(tmp_path / "ref")) == (18 if method == "dpo" else 15)
    assert max(abs(x - y) for x, y in zip(losses(run), losses(tmp_path / "ref"))) < 1e-4
    assert not (tmp_path / ".run.partial").exists()
