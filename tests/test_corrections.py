"""Corrections that help instead of hurt (issue 32, part 3): replay of the earlier training data beside new
corrections (the ratio in the data actually trained on), DPO's SFT term on the chosen answers, the
refusal of too few pairs, and a smaller default learning rate when a run continues from an adapter."""

from __future__ import annotations

import json

from conftest import cli, toy_examples, write_jsonl
from tunesmith.data.formats import load_examples
from tunesmith.data.mix import with_replay
from tunesmith.train.config import MIN_PAIRS


def chats(prefix: str, n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"{prefix} meeting {i}"},
                {"role": "assistant", "content": f"Notes {i}."},
            ]
        }
        for i in range(n)
    ]


def test_replay_draws_the_ratio_and_never_an_example_a_correction_replaces(tmp_path):
    old = write_jsonl(tmp_path / "old" / "train.jsonl", chats("old", 10))
    new_rows = chats("new", 3) + [
        {
            "messages": [
                {"role": "user", "content": "old meeting 4"},
                {"role": "assistant", "content": "Fixed."},
            ]
        }
    ]
    new = load_examples(write_jsonl(tmp_path / "new.jsonl", new_rows))
    for ratio, want in ((1.0, 4), (0.5, 2), (10.0, 9)):
        mixed, k = with_replay(list(new), tmp_path / "old", ratio, seed=7)
        assert k == want and len(mixed) == 4 + want
        answers = [e.messages[-1]["content"] for e in mixed if e.messages[0]["content"] == "old meeting 4"]
        assert answers == ["Fixed."]  # the earlier answer to a corrected prompt is never replayed
    again, _ = with_replay(list(new), old, 1.0, seed=7)
    assert [e.messages for e in again] == [e.messages for e in with_replay(list(new), old, 1.0, seed=7)[0]]


def test_train_with_replay_trains_on_both_and_records_it(tiny_model_dir, tmp_path):
    m = str(tiny_model_dir("llama"))
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(12))
    write_jsonl(d / "val.jsonl", toy_examples(2, seed=1))
    common = ["--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--registry", "off"]
    r = cli("train", "--model", m, "--data", str(d), "--out", str(tmp_path / "v1"), *common, "--quiet")
    assert r.returncode == 0, r.stderr
    fixes = write_jsonl(tmp_path / "fixes.jsonl", toy_examples(3, seed=5))
    r = cli(
        "train",
        "--data",
        str(fixes),
        "--val",
        str(d / "val.jsonl"),
        "--from-adapter",
        str(tmp_path / "v1"),
        "--replay",
        str(d),
        "--replay-ratio",
        "2",
        "--out",
        str(tmp_path / "v2"),
        *common,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert (
        "replay: 6 earlier examples from" in r.stderr and "beside the 3 new ones; below 3 earlier" in r.stderr
    )
    assert json.loads(r.stdout)["examples"] == 9  # 3 corrections + 2 x 3 replayed
    record = json.loads((tmp_path / "v2" / "tunesmith-run.json").read_text())
    roles = {f["role"] for f in record["data"]}
    assert "replay" in roles, record["data"]
    config = (tmp_path / "v2" / "config.yaml").read_text()
    assert f"replay: {d}\n" in config and "replay_ratio: 2.0\n" in config
    assert "lr: 0.0005\n" in config  # LoRA's default 1e-3, halved when continuing
    r = cli(
        "train", "--method", "dpo", "--data", str(fixes), "--replay", str(d), "--out", str(tmp_path / "x")
    )
    assert r.returncode == 2 and "--replay mixes earlier examples into supervised training" in r.stderr
    # plan says which route these data take, and what is missing from one that would not hold v1
    r = cli("plan", "--data", str(fixes), "--from-adapter", str(tmp_path / "v1"), "--replay", str(d))
    assert r.returncode == 0, r.stderr
    assert (
        "route        12 examples, the new ones with --replay-ratio 3 earlier ones each, continuing "
        in r.stdout
    )
    r = cli("plan", "--data", str(fixes), "--from-adapter", str(tmp_path / "v1"))
    assert r.returncode == 0 and "3 new examples continue" in r.stdout and "add --replay DATA" in r.stdout


def pairs(n: int) -> list[dict]:
    return [
        {
            "prompt": f"Write the meeting notes. Focus: topic {i}",
            "chosen": f"Meeting Summary: topic {i}.",
            "rejected": f"we talked about stuff {i}",
        }
        for i in range(n)
    ]


def test_dpo_refuses_too_few_pairs_and_its_sft_term_keeps_the_chosen_answers_likely(tiny_model_dir, tmp_path):
    m = str(tiny_model_dir("llama"))
    write_jsonl(tmp_path / "few" / "train.jsonl", pairs(MIN_PAIRS - 1))
    write_jsonl(tmp_path / "few" / "val.jsonl", pairs(2))
    r = cli(
        "train",
        "--method",
        "dpo",
        "--model",
        m,
        "--data",
        str(tmp_path / "few"),
        "--out",
        str(tmp_path / "refused"),
    )
    assert r.returncode == 2 and f"{MIN_PAIRS - 1} preference pairs; on fewer than {MIN_PAIRS}" in r.stderr
    assert "--allow-few-pairs" in r.stderr and not (tmp_path / "refused").exists()
    r = cli("plan", "--method", "dpo", "--model", m, "--data", str(tmp_path / "few"))
    assert (
        r.returncode == 2 and f"route: {MIN_PAIRS - 1} pairs: DPO refuses fewer than {MIN_PAIRS}" in r.stderr
    )
    # no validation file: a tenth is held out, and the plan counts what training counts
    write_jsonl(tmp_path / "alone.jsonl", pairs(MIN_PAIRS))
    left = MIN_PAIRS - max(1, MIN_PAIRS // 10)
    r = cli("train", "--method", "dpo", "--model", m, "--data", str(tmp_path / "alone.jsonl"), "--out",
            str(tmp_path / "refused2"))  # fmt: skip
    assert r.returncode == 2 and f"{left} preference pairs; on fewer than {MIN_PAIRS}" in r.stderr, r.stderr
    r = cli("plan", "--method", "dpo", "--model", m, "--data", str(tmp_path / "alone.jsonl"))
    assert r.returncode == 2 and f"route: {left} pairs: DPO refuses fewer than {MIN_PAIRS}" in r.stderr, (
        r.stderr
    )
    nll = {}
    for w in ("0", "1"):
        out = tmp_path / f"sft-{w}"
        r = cli(
            "train",
            "--method",
            "dpo",
            "--model",
            m,
            "--data",
            str(tmp_path / "few"),
            "--out",
            str(out),
            "--allow-few-pairs",
            "--dpo-sft",
            w,
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "5e-3",
            "--threads",
            "1",
            "--registry",
            "off",
            "--quiet",
        )
        assert r.returncode == 0, r.stderr
        steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        nll[w] = [s["chosen_nll"] for s in steps if "chosen_nll" in s]
    assert len(nll["0"]) == len(nll["1"]) > 3 and nll["0"][0] == nll["1"][0]  # the same first step
    assert nll["1"][-1] < nll["0"][-1] and nll["1"][-1] < nll["1"][0]  # the chosen answers became likelier
