"""`tunesmith eval --gate REF` and evals in the registry: the verdict on synthetic results (worse,
same, different test set or decoding, Holm correction), `--adapter TAG` and `--gate TAG` through
the registry on a tiny model, and on the real default model a broken adapter that must fail."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLES, cli, toy_examples, write_jsonl
from tunesmith.errors import UserError
from tunesmith.eval import gate
from tunesmith.eval.verdict import verdict
from tunesmith.registry.db import Registry
from tunesmith.scoring.stats import holm


def results(
    rouge: list[float], fmt: list[bool] | None = None, decoding: dict | None = None, inputs=None
) -> dict:
    n = len(rouge)
    fmt = fmt if fmt is not None else [True] * n
    examples = [
        {"path": "test.jsonl", "line": i + 1, "input": (inputs or [f"q{i}" for i in range(n)])[i],
         "reference": f"a{i}", "scores": {"rougeL": r}, "format_ok": ok}
        for i, (r, ok) in enumerate(zip(rouge, fmt))
    ]  # fmt: skip
    return {
        "examples": examples,
        "metrics": {"rougeL": sum(rouge) / n, "format_adherence": 100.0 * sum(fmt) / n},
        "decoding": decoding or {"greedy": True, "max_new_tokens": 64},
    }


GOOD = [40.0, 35.0, 50.0, 42.0, 38.0, 45.0, 41.0, 39.0, 47.0, 44.0, 36.0, 43.0]


def test_a_clearly_worse_candidate_fails_and_the_same_one_passes():
    worse = gate.check(results([r - 20 for r in GOOD]), results(GOOD), "v9")
    assert not worse["passed"] and worse["metrics"]["rougeL"]["worse"]
    assert worse["metrics"]["rougeL"]["change"] == -20.0 and worse["metrics"]["rougeL"]["p_holm"] < 0.05
    assert not worse["metrics"]["format_adherence"]["worse"]  # unchanged
    text = gate.describe(worse)
    assert text.startswith(
        "gate failed: significantly worse than v9 on the same 12 examples on rougeL (rougeL -20.00"
    )
    same = gate.check(results(GOOD), results(GOOD), "v9")
    assert same["passed"] and same["metrics"]["rougeL"]["p_holm"] == 1.0
    assert gate.describe(same).startswith(
        "gate passed: not significantly worse than v9 on the same 12 examples"
    )
    better = gate.check(results([r + 5 for r in GOOD]), results(GOOD), "v9")
    assert better["passed"]  # better is not worse


def test_format_adherence_is_gated_too_and_holm_adjusts_for_two_metrics():
    fmt_bad = [False] * 12
    v = gate.check(results(GOOD, fmt_bad), results(GOOD), "v9")
    assert (
        not v["passed"] and v["metrics"]["format_adherence"]["worse"] and not v["metrics"]["rougeL"]["worse"]
    )
    assert holm({"a": 0.01, "b": 0.04}) == {"a": 0.02, "b": 0.04}
    assert holm({"a": 0.03, "b": 0.02, "c": 0.5}) == {"b": 0.06, "a": 0.06, "c": 0.5}


def test_a_different_test_set_or_decoding_is_refused():
    with pytest.raises(
        UserError, match=r"not the same frozen test set and decoding \(12 examples here, 11 there\)"
    ):
        gate.check(results(GOOD), results(GOOD[:11]), "v9")
    other = [f"q{i}" for i in range(11)] + ["something else"]
    with pytest.raises(UserError, match=r"example 12 differs"):
        gate.check(results(GOOD, inputs=other), results(GOOD), "v9")
    with pytest.raises(UserError, match=r"decoding differs: max_new_tokens 64 -> 128"):
        gate.check(results(GOOD, decoding={"greedy": True, "max_new_tokens": 128}), results(GOOD), "v9")
    with pytest.raises(UserError, match=r"--gate-metrics length_ratio: neither higher nor lower is better"):
        gate.check(results(GOOD), results(GOOD), "v9", ["length_ratio"])
    with pytest.raises(UserError, match=r"--gate-metrics bleu: not measured in both runs"):
        gate.check(results(GOOD), results(GOOD), "v9", ["bleu"])


def system(name: str, rouge: list[float], prompt_tokens: int, seconds: float) -> dict:
    r = results(rouge)
    for row in r["examples"]:
        row.update(prompt_tokens=prompt_tokens, new_tokens=20)
    return {**r, "system": name, "generation_s": seconds * len(rouge)}


def test_the_verdict_names_the_winner_says_whether_it_holds_and_what_each_answer_costs():
    base = system("base", [r - 15 for r in GOOD], 300, 1.0)
    runs = [base, system("rag:3", [r - 4 for r in GOOD], 1400, 3.0), system("tuned", GOOD, 300, 1.0)]
    v = verdict(runs)
    assert (v["winner"], v["runner_up"], v["metric"], v["significant"]) == ("tuned", "rag:3", "rougeL", True)
    assert v["margins"]["rag:3"]["change"] == 4.0 and v["margins"]["base"]["change"] == 15.0
    assert v["cost"]["rag:3"] == {"prompt_tokens": 1400.0, "new_tokens": 20.0, "seconds": 3.0}
    assert v["sentence"].startswith(
        "tuned wins on rougeL (41.7): +4.0 rougeL over rag:3 (95 % interval +4.0 to +4.0), significant "
        "against every other system after the Holm correction over 2 comparisons. Per answer: base 300 "
        "prompt + 20 new tokens, 1.00 s; rag:3 1,400 prompt + 20 new tokens, 3.00 s; tuned 300 prompt + 20 "
        "new tokens, 1.00 s."
    )
    noisy = [
        x + (3 if i % 2 else -3) for i, x in enumerate(GOOD)
    ]  # rag:3 ties on average, example by example noise
    close = verdict([system("rag:3", noisy, 1400, 3.0), system("tuned", GOOD, 300, 1.0)])
    assert not close["significant"]
    assert close["sentence"].startswith("no clear winner on rougeL: ")
    assert verdict(runs[:1]) is None


def test_evals_are_registered_and_the_gate_finds_a_tagged_run_s_eval(tiny_model_dir, tmp_path):
    m = str(tiny_model_dir("llama"))
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(8))
    write_jsonl(d / "val.jsonl", toy_examples(2, seed=1))
    write_jsonl(d / "test.jsonl", toy_examples(6, seed=2))
    reg = str(tmp_path / "reg.db")
    r = cli("train", "--model", m, "--data", str(d), "--out", str(tmp_path / "v1"), "--registry", reg,
                "--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert cli("runs", "--registry", reg, "tag", "v1", "production").returncode == 0
    common = ["eval", "--data", str(d / "test.jsonl"), "--max-new-tokens", "8", "--registry", reg, "--quiet"]
    # --adapter production: the tagged run's folder, from the registry
    first = cli(*common, "--adapter", "production", "--out", str(tmp_path / "e1"))
    assert first.returncode == 0, first.stderr
    registry = Registry(reg)
    [ev] = registry.runs(kind="eval")
    rec = registry.get(ev["id"])
    v1 = registry.find("v1")
    assert rec["parents"] == [
        {"parent": v1, "parent_path": str((tmp_path / "v1").resolve()), "relation": "evaluated"}
    ]
    assert [(x["role"], x["examples"]) for x in rec["data"]] == [("test", 6)]
    written = json.loads((tmp_path / "e1" / "results.json").read_text())
    assert rec["result"]["examples"][0]["output"] == written["examples"][0]["output"]
    assert any(m["name"] == "tuned/rougeL" for m in rec["metrics"])
    # the same adapter against itself, named by its tag: its registered eval is found and it passes
    again = cli(*common, "--adapter", "production", "--gate", "production")
    assert again.returncode == 0, again.stderr
    assert (
        f"gate passed: not significantly worse than production (run {v1}, eval {ev['id']}) on the same 6 "
        in again.stdout
    )
    # other decoding settings: no registered eval to compare with
    other = cli(*common[:3], "--max-new-tokens", "9", *common[5:], "--adapter", "v1", "--gate", "v1")
    assert other.returncode == 2
    assert (
        "--gate v1: none of its 2 registered evals is on this test set with these decoding settings"
        in other.stderr
    )
    # several systems: the verdict sentence under the table, in results.json and at the top of the report
    both = cli(*common, "--adapter", "v1", "--systems", "base,tuned", "--out", str(tmp_path / "both"))
    assert both.returncode == 0, both.stderr
    said = json.loads((tmp_path / "both" / "results.json").read_text())["verdict"]
    assert said["winner"] in ("base", "tuned") and set(said["cost"]) == {"base", "tuned"}
    assert said["sentence"] in both.stdout.replace("\n", " ") or said["sentence"][:60] in both.stdout
    assert "<b>Verdict.</b>" in (tmp_path / "both" / "report.html").read_text()
    # a results.json as REF works without any registry
    res = cli(*common[:-3], "--registry", "off", "--adapter", str(tmp_path / "v1"), "--gate",
                  str(tmp_path / "e1" / "results.json"))  # fmt: skip
    assert res.returncode == 0 and "gate passed" in res.stdout, res.stderr


@pytest.mark.slow
def test_a_broken_adapter_fails_the_gate_on_the_example_test_set(tmp_path):
    """The real default model: one step at a huge learning rate wrecks the adapter; against the base
    model's results on the same 6 test examples the gate must fail with exit code 3. (The same results
    passing against themselves is tested above on a tiny model.)"""
    reg = str(tmp_path / "reg.db")
    common = ["eval", "--data", str(EXAMPLES / "test.jsonl"), "--limit", "6", "--max-new-tokens", "32",
              "--registry", reg, "--quiet"]  # fmt: skip
    base = cli(*common, "--out", str(tmp_path / "base"))
    assert base.returncode == 0, base.stderr
    broken = ["--max-steps", "1", "--batch-size", "2", "--lr", "3.0", "--warmup-ratio", "0", "--quiet"]
    # the training file alone: no validation of 20 long transcripts before and after the one step
    train = str(EXAMPLES / "train.jsonl")
    r = cli("train", "--data", train, "--out", str(tmp_path / "broken"), "--registry", reg, *broken)
    assert r.returncode == 0, r.stderr
    ref = str(tmp_path / "base" / "results.json")
    bad = cli(*common, "--adapter", str(tmp_path / "broken"), "--gate", ref)
    assert bad.returncode == gate.GATE_FAILED == 3, (bad.stdout, bad.stderr)
    assert "gate failed: significantly worse than" in bad.stdout and "on rougeL (rougeL -" in bad.stdout
