"""The whole path through the real CLI on a tiny model: check -> train -> eval -> generate."""

import json

from conftest import cli, toy_examples, write_jsonl

STYLE = """required:
  - pattern: '^Meeting Summary:'
    name: heading
forbidden:
  - pattern: '(?i)\\bwe\\b'
    name: third person
max_words: 50
"""


def test_check_train_eval_generate(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("llama"))
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", toy_examples(8))
    write_jsonl(data / "val.jsonl", toy_examples(2, seed=1))
    test = write_jsonl(data / "test.jsonl", toy_examples(3, seed=2))
    style = tmp_path / "style.yaml"
    style.write_text(STYLE)

    r = cli("data", "check", str(data / "train.jsonl"))
    assert r.returncode == 0
    assert r.stdout.splitlines() == [
        f"{data / 'train.jsonl'}: only 8 examples; fine-tuning usually needs 100+ to help (warning)",
        "8 valid examples, 0 error(s), 1 warning(s)",
    ]

    run = tmp_path / "run"
    r = cli(
        "train",
        "--model",
        model,
        "--data",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 2 and summary["examples"] == 8 and len(summary["val_losses"]) == 1
    assert summary["tokens_per_s"] > 0
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.yaml",
        "metrics.jsonl",
        "tunesmith-run.json",
    ):
        assert (run / name).is_file(), name
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert metrics[-1]["val_loss"] > 0
    assert "micro_batch_size: 2\n" in (run / "config.yaml").read_text()

    # eval finds the base model from the run dir; --out gets results.json
    r = cli(
        "eval",
        "--adapter",
        str(run),
        "--data",
        str(test),
        "--style",
        str(style),
        "--out",
        str(tmp_path / "ev"),
        "--max-new-tokens",
        "12",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["system"] == "tuned" and res["n"] == 3 and res["model"] == model
    assert set(res["metrics"]) >= {
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "format_adherence",
        "stopped_by_eos",
    }
    ex = res["examples"][0]
    assert ex["reference"].startswith("Meeting Summary:") and set(ex["style"]) == {
        "heading",
        "third person",
        "at most 50 words",
    }
    assert 0 < ex["new_tokens"] <= 12 or ex["stopped"]
    assert "rougeL" in r.stdout and "format adherence %" in r.stdout and "95 % bootstrap CI" in r.stdout

    # a before/after table against a baseline results.json
    r2 = cli(
        "eval",
        "--model",
        model,
        "--data",
        str(test),
        "--max-new-tokens",
        "4",
        "--quiet",
        "--baseline",
        str(tmp_path / "ev" / "results.json"),
        "--json",
    )
    base = json.loads(r2.stdout)
    assert base["system"] == "base"
    # every metric has a bootstrap interval around its mean, and a paired test against the baseline
    for key in ("rougeL", "bleu", "chrf", "token_f1", "exact_match", "format_adherence"):
        lo, hi = res["metrics"]["ci95"][key]
        assert lo <= res["metrics"][key] <= hi
    for key in ("rougeL", "bleu", "chrf", "token_f1", "exact_match", "stopped_by_eos"):
        assert set(base["comparison"][key]) == {"change", "ci", "p", "significant"}
    assert "format_adherence" not in base["comparison"]  # the base run had no --style

    r = cli("generate", "--adapter", str(run), "--max-new-tokens", "5", "--json", "Write the meeting notes.")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"output", "new_tokens", "stopped"} and 0 <= out["new_tokens"] <= 5
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\nsecond prompt\n")
    r = cli("generate", "--model", model, "--input", str(prompts), "--max-new-tokens", "3", "--json")
    assert len(r.stdout.splitlines()) == 2


def test_eval_bad_inputs(tiny_model_dir, tmp_path):
    test = write_jsonl(tmp_path / "t.jsonl", toy_examples(2))
    r = cli("eval", "--adapter", str(tmp_path / "nope"), "--data", str(test))
    assert r.returncode == 2 and r.stderr == f"error: --adapter {tmp_path / 'nope'}: no such directory\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("required:\n  - pattern: '(unclosed'\n")
    r = cli("eval", "--model", str(tiny_model_dir("llama")), "--data", str(test), "--style", str(bad))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: --style {bad}: required[0].pattern: invalid regular expression")


def test_eval_with_several_references_labels_and_a_json_rule(tiny_model_dir, tmp_path):
    from tunesmith.scoring.metrics import METEOR_VARIANT, embedding_available

    rows = [
        {"prompt": f"Is item {i} in stock?", "completion": ans, "references": [ans.upper() + "."]}
        for i, ans in enumerate(["yes", "no", "yes"])
    ]
    rows[1]["references"].append("nope")
    test = write_jsonl(tmp_path / "labels.jsonl", rows)
    style = tmp_path / "style.yaml"
    style.write_text("json_schema: {type: object}\nmax_chars: 400\n")
    r = cli(
        "eval",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(test),
        "--style",
        str(style),
        "--max-new-tokens",
        "4",
        "--quiet",
        "--embedding",
        "--out",
        str(tmp_path / "ev"),
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["multi_reference"] == "best" and res["max_references"] == 3
    assert (
        res["examples"][1]["references"] == ["no", "NO.", "nope"] and res["examples"][0]["reference"] == "yes"
    )
    assert res["metric_notes"]["meteor"] == METEOR_VARIANT
    m = res["metrics"]
    assert m["labels"] == ["no", "nope", "yes"]
    for key in (
        "meteor",
        "rouge1_mean_refs",
        "length_ratio",
        "label_accuracy",
        "label_macro_f1",
        "format_adherence",
    ):
        lo, hi = m["ci95"][key]
        assert lo <= m[key] <= hi, key
    assert m["style_rules"]["valid JSON matching json_schema"] == 0.0  # a tiny random model writes no JSON
    assert ("embedding" in m) == embedding_available() and (res["notes"] == []) == embedding_available()
    table = " ".join(r.stdout.split())  # the title wraps to the table's width
    assert "best of up to 3 references" in table and "label macro F1" in table
