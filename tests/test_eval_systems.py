"""`tunesmith eval --systems ... --memorization --forgetting`: several systems, one command, one report."""

from __future__ import annotations

import json
import math

import pytest

from conftest import cli, make_adapter, toy_examples, write_jsonl


@pytest.fixture
def setup(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(12))
    write_jsonl(d / "test.jsonl", toy_examples(4, seed=3))
    adapter = make_adapter(model, tmp_path / "run", seed=1)
    return model, d, adapter


def test_systems_in_one_command(setup, tmp_path):
    model, d, adapter = setup
    r = cli(
        "eval",
        "--model",
        str(model),
        "--adapter",
        str(adapter),
        "--data",
        str(d / "test.jsonl"),
        "--systems",
        "base,prompted,few-shot:2,rag:1,tuned",
        "--system",
        "You write meeting notes.",
        "--max-new-tokens",
        "6",
        "--quiet",
        "--out",
        str(tmp_path / "ev"),
        "--memorization",
        "--forgetting",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [s["system"] for s in res["systems"]] == ["base", "prompted", "few-shot:2", "rag:1", "tuned"]
    by = {s["system"]: s for s in res["systems"]}
    assert by["tuned"]["adapter"] == str(adapter) and by["base"]["adapter"] is None
    assert all(s["decoding"] == by["base"]["decoding"] for s in res["systems"])  # same decoding for all
    # few-shot: the same two training examples everywhere; rag: the most similar one per prompt
    shots = [e["shots"] for e in by["few-shot:2"]["examples"]]
    assert all(s == shots[0] for s in shots) and len(shots[0]) == 2
    assert all(len(e["shots"]) == 1 for e in by["rag:1"]["examples"])
    assert set(by["tuned"]["comparisons"]) == {"base"} and "rougeL" in by["tuned"]["comparisons"]["base"]
    # the adapter changes the outputs; the base-model systems differ by their prompts
    assert [e["output"] for e in by["tuned"]["examples"]] != [e["output"] for e in by["base"]["examples"]]
    mem, fg = res["memorization"], res["forgetting"]
    assert (
        mem["n_train"] == 4
        and mem["n_held_out"] == 4
        and mem["gap"] == pytest.approx(mem["train"] - mem["held_out"], abs=0.01)
    )
    assert fg["before"]["n"] == 40 and fg["before"]["perplexity"] != fg["after"]["perplexity"]
    assert fg["perplexity_ratio"] == pytest.approx(
        fg["after"]["perplexity"] / fg["before"]["perplexity"], abs=1e-3
    )
    out = " ".join(r.stdout.split())
    assert (
        "5 systems on" in out and "memorization: rougeL" in out and "forgetting (40 general questions)" in out
    )
    html = (tmp_path / "ev" / "report.html").read_text()
    assert html.count('data-system="rag:1"') >= 5 and "Generalization and forgetting" in html


def test_answer_perplexity_matches_full_logits(tiny_model_dir):
    import torch

    from tunesmith.eval.probes import answer_perplexity
    from tunesmith.models.chat import encode_chat
    from tunesmith.models.loading import load

    loaded = load(str(tiny_model_dir("llama")), quiet=True)
    convs = [ex["messages"] for ex in toy_examples(3)]
    total, n = 0.0, 0
    for c in convs:
        enc = encode_chat(loaded.tokenizer, c, train_on="last")
        ids, labels = torch.tensor([enc.input_ids]), torch.tensor([enc.labels])
        with torch.no_grad():
            logits = loaded.model(ids).logits[0, :-1]
        tgt = labels[0, 1:]
        keep = tgt != -100
        total += float(torch.nn.functional.cross_entropy(logits[keep], tgt[keep], reduction="sum"))
        n += int(keep.sum())
    assert answer_perplexity(loaded.model, loaded.tokenizer, convs) == pytest.approx(
        math.exp(total / n), rel=1e-4
    )


def test_systems_errors(setup, tmp_path):
    model, d, adapter = setup
    r = cli("eval", "--model", str(model), "--data", str(d / "test.jsonl"), "--systems", "base,tuned")
    assert r.returncode == 2 and r.stderr == "error: --systems tuned needs --adapter RUN_DIR\n"
    r = cli("eval", "--model", str(model), "--data", str(d / "test.jsonl"), "--systems", "prompted")
    assert (
        r.returncode == 2
        and r.stderr
        == "error: --systems prompted: needs your system prompt: --system TEXT or --system-file FILE\n"
    )
    r = cli(
        "eval",
        "--model",
        str(model),
        "--data",
        str(d / "test.jsonl"),
        "--systems",
        "rag:2",
        "--train",
        str(tmp_path / "no.jsonl"),
    )
    assert r.returncode == 2 and "need training examples: --train FILE" in r.stderr
    r = cli("eval", "--model", str(model), "--data", str(d / "test.jsonl"), "--forgetting")
    assert (
        r.returncode == 2
        and r.stderr
        == "error: --memorization and --forgetting look at a tuned model: give --adapter RUN_DIR\n"
    )


def test_sampling_with_a_seed_and_stop_strings(tiny_model_dir, tmp_path):
    from tunesmith.models.loading import generate, load

    model = tiny_model_dir("llama")  # with a random adapter it writes visible characters rather than newlines
    loaded = load(str(model), make_adapter(model, tmp_path / "a", seed=1), quiet=True)
    convs = [ex["messages"][:1] for ex in toy_examples(3)]
    run = lambda **kw: [
        g.text for g in generate(loaded.model, loaded.tokenizer, convs, max_new_tokens=12, **kw)
    ]
    a, b = run(temperature=1.0, seed=7), run(temperature=1.0, seed=7)
    assert a == b and a != run(temperature=1.0, seed=8) and a != run()
    greedy = run()
    cut = next(t[2:4] for t in greedy if len(t) > 5)
    stopped = generate(loaded.model, loaded.tokenizer, convs, max_new_tokens=12, stop=[cut])
    for full, g in zip(greedy, stopped):
        assert g.text == (full[: full.index(cut)].strip() if cut in full else full)
        assert g.stopped or cut not in full


def test_llm_judge_grades_every_answer(setup, tmp_path):
    """--judge MODEL --rubric FILE: each answer's grade is what the judge model replies to the rubric
    prompt (recomputed here in-process), on a 1-10 scale with an interval, per system."""
    from tunesmith.scoring.judge import make_judge

    model, d, adapter = setup
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Starts with 'Meeting Summary:' and lists the points discussed.\n")
    r = cli(
        "eval",
        "--model",
        str(model),
        "--adapter",
        str(adapter),
        "--data",
        str(d / "test.jsonl"),
        "--systems",
        "base,tuned",
        "--judge",
        str(model),
        "--rubric",
        str(rubric),
        "--max-new-tokens",
        "6",
        "--quiet",
        "--out",
        str(tmp_path / "ev"),
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    judge = make_judge(str(model), str(rubric))
    for system in res["systems"]:
        ex = system["examples"]
        prompts = [[{"role": "user", "content": e["input"]}] for e in ex]
        want = [
            round(10 * g, 2) for g in judge(prompts, [e["output"] for e in ex], [e["reference"] for e in ex])
        ]
        assert [e["scores"]["judge"] for e in ex] == want
        assert system["metrics"]["judge"] == pytest.approx(sum(want) / len(want), abs=0.01)
        assert len(system["metrics"]["ci95"]["judge"]) == 2
    assert "judge" in res["systems"][1]["comparisons"]["base"]
    assert "LLM judge grade (1-10)" in " ".join(r.stdout.split())

    r = cli("eval", "--model", str(model), "--data", str(d / "test.jsonl"), "--rubric", str(rubric))
    assert (
        r.returncode == 2
        and r.stderr == "error: --rubric goes with --judge MODEL (the local model that grades with it)\n"
    )
    r = cli("eval", "--model", str(model), "--data", str(d / "test.jsonl"), "--judge", str(model))
    assert (
        r.returncode == 2
        and r.stderr == "error: --judge: needs --rubric FILE (what a good answer does, in words)\n"
    )


def test_pick_ranks_candidates_on_one_test_set_with_tests_against_the_best_and_cost(setup, tmp_path):
    """Two candidates (the base model, and a run with a random adapter): each is evaluated in a process
    of its own; the ranking is by ROUGE-L, the second tested against the first on the same examples,
    each with its time per answer and peak memory; a run that does not exist is one line."""
    model, d, adapter = setup
    (adapter / "tunesmith-run.json").write_text(json.dumps({"model": str(model)}))
    test = str(d / "test.jsonl")
    r = cli("pick", str(model), str(adapter), "--data", test, "--max-new-tokens", "6", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["metric"] == "rougeL" and out["n"] == 4 and not out["lower_is_better"]
    first, second = out["ranking"]
    assert {first["kind"], second["kind"]} == {"model", "adapter"}
    assert first["value"] >= second["value"] and first["against_best"] is None
    assert second["against_best"]["change"] == pytest.approx(first["value"] - second["value"], abs=0.02)
    for row in out["ranking"]:
        assert row["ms_per_answer"] > 0 and 100 < row["peak_mib"] < 4096 and len(row["ci95"]) == 2
    alone = json.loads(cli("eval", "--model", str(model), "--data", test, "--max-new-tokens", "6", "--json",
                           "--registry", "off").stdout)  # fmt: skip
    base = next(x for x in out["ranking"] if x["kind"] == "model")
    assert base["value"] == alone["metrics"]["rougeL"]  # the same eval as `tunesmith eval`
    from tunesmith.eval.pick import lines

    table = lines(out)
    assert table[1].split()[:2] == ["candidate", "rougeL"] and table[-2].startswith(f"best: {first['name']}")
    r = cli("pick", str(model), str(tmp_path / "nope"), "--data", test)
    assert r.returncode == 2 and r.stderr.startswith(
        f"error: pick: {tmp_path / 'nope'}: no such model, run or alias"
    )
    (tmp_path / "empty").mkdir()
    r = cli("pick", str(model), str(tmp_path / "empty"), "--data", test)
    assert r.returncode == 2 and "error: pick: the eval of empty failed: " in r.stderr
    assert cli("pick", str(model), "--data", test).stderr.startswith("error: pick: give two or more")
