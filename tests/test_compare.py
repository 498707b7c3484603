"""`tunesmith runs compare`: the settings, the data example by example, and the metrics of registered
evals on one test set (refused on different ones unless asked), on a tiny model."""

from __future__ import annotations

from conftest import chat, cli, toy_examples, write_jsonl


def test_compare_two_versions(tiny_model_dir, tmp_path):
    m = str(tiny_model_dir("llama"))
    reg = str(tmp_path / "reg.db")
    rows = toy_examples(8)
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    write_jsonl(d1 / "train.jsonl", rows)
    changed = dict(
        rows[2], messages=[rows[2]["messages"][0], {"role": "assistant", "content": "A better note."}]
    )
    v2_rows = (
        rows[1:2]
        + [changed]
        + rows[3:]
        + [chat("A new meeting", "Notes."), chat("Another one", "More notes.")]
    )
    write_jsonl(d2 / "train.jsonl", v2_rows)
    for d in (d1, d2):
        write_jsonl(d / "val.jsonl", toy_examples(2, seed=1))
    test = write_jsonl(tmp_path / "test.jsonl", toy_examples(5, seed=2))
    for name, d, lr in (("v1", d1, "0.001"), ("v2", d2, "0.002"), ("v3", d1, "0.001")):
        r = cli("train", "--model", m, "--data", str(d), "--out", str(tmp_path / name), "--registry", reg,
                    "--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--lr", lr, "--quiet")  # fmt: skip
        assert r.returncode == 0, r.stderr
    for name, tokens in (("v1", "6"), ("v2", "6"), ("v3", "7")):
        flags = ["--data", str(test), "--max-new-tokens", tokens, "--registry", reg, "--quiet"]
        r = cli("eval", "--adapter", name, *flags)
        assert r.returncode == 0, r.stderr
    out = cli("runs", "--registry", reg, "compare", "v1", "v2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("compare v1 (") and " -> v2 (" in lines[0]
    assert "  data             " in out.stdout and "  lr               0.001 -> 0.002" in out.stdout
    assert "  train  8 -> 9 examples: 2 added, 1 removed, 1 changed" in lines
    assert "  val    the same files (val.jsonl)" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("metrics on "))
    assert lines[header] == f"metrics on {test} (5 examples, same decoding), paired test against the first"
    assert lines[header + 1].split() == ["metric", "v1", "v2"]
    assert (
        lines[header + 2].startswith("  rougeL")
        and " v2: " in lines[header + 2]
        and " p " in lines[header + 2]
    )
    # v3 was evaluated with other decoding settings: not comparable with v1, unless asked
    refused = cli("runs", "--registry", reg, "compare", "v1", "v3")
    assert refused.returncode == 2
    assert "have no eval on one test set with the same decoding settings" in refused.stderr
    shown = cli("runs", "--registry", reg, "compare", "v1", "v3", "--allow-different-test")
    assert shown.returncode == 0, shown.stderr
    assert "metrics (DIFFERENT test sets or decoding: not comparable, no paired tests)" in shown.stdout
    assert "  train  the same files (train.jsonl)" in shown.stdout
    assert " p " not in shown.stdout.split("metrics (DIFFERENT")[1]
