"""`train --task classify | multilabel | regress` and `tunesmith predict` on tiny random models: a
separable toy task learned to ≥ 95 % accuracy, squared error falling on a linear toy target, several
labels, what is refused before anything loads, an exact resume, and a text command refusing the run."""

from __future__ import annotations

import json
import random

import pytest

from conftest import SERVE_KEY, Server, cli, train_then_sigkill, write_jsonl

WORDS = "budget design remote battery case prototype marketing research team meeting".split()


def toy_classes(n: int, seed: int = 0) -> list[dict]:
    """Separable: "yes" texts say the budget is good, "no" texts that the team is bad."""
    rng = random.Random(seed)
    return [
        {
            "text": " ".join(rng.sample(WORDS, 4)) + (" the budget is good" if i % 2 else " the team is bad"),
            "label": "yes" if i % 2 else "no",
        }
        for i in range(n)
    ]


def toy_targets(n: int, seed: int = 0) -> list[dict]:
    """Linear: the target is 10 per "budget" word, plus 5."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = rng.randint(0, 9)
        rows.append({"text": " ".join(["budget"] * x + rng.sample(WORDS[1:], 3)), "target": 10.0 * x + 5})
    return rows


def metrics(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def separable(tiny_model_dir, tmp_path_factory):
    """(the train command's result, its folder) for the separable toy task, trained once."""
    tmp_path = tmp_path_factory.mktemp("separable")
    data = write_jsonl(tmp_path / "cls.jsonl", toy_classes(120))
    m = str(tiny_model_dir("llama"))
    r = cli(
        "train",
        "--task",
        "classify",
        "--model",
        m,
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--registry",
        "off",
    )
    return r, tmp_path


def test_a_separable_task_is_learned_and_predict_labels_with_probabilities(separable, tmp_path):
    r, trained = separable
    assert r.returncode == 0, r.stderr
    assert "no validation file: holding out 12 of 120 examples (seed 42) to measure on" in r.stderr
    vals = [x for x in metrics(trained / "run") if "val_accuracy" in x]
    assert vals[-1]["val_accuracy"] >= 95.0
    assert json.loads((trained / "run" / "labels.json").read_text()) == {
        "task": "classify",
        "classes": ["no", "yes"],
        "counts": [54, 54],  # the held-out 12 taken by class: 6 and 6 of 60 each
        "examples": 108,
    }
    test = write_jsonl(tmp_path / "new.jsonl", [{"text": r["text"]} for r in toy_classes(40, seed=7)])
    r = cli("predict", "--adapter", str(trained / "run"), str(test), "--out", str(tmp_path / "p.jsonl"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    want = [t["label"] for t in toy_classes(40, seed=7)]
    assert sum(p["label"] == w for p, w in zip(rows, want)) >= 38
    for p in rows:
        assert set(p["probabilities"]) == {"no", "yes"} and abs(sum(p["probabilities"].values()) - 1) < 1e-3
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    gold = write_jsonl(tmp_path / "gold.jsonl", toy_classes(40, seed=7))
    r = cli("predict", "--adapter", str(trained / "run"), str(gold))
    assert r.stderr.strip().endswith("agree with the 40 given labels") and '"gold": "yes"' in r.stdout
    r = cli("generate", "--adapter", str(trained / "run"), "hello")
    assert r.returncode == 2 and "a run trained with --task" in r.stderr and "tunesmith predict" in r.stderr


def test_serve_answers_a_classifier_run_on_its_own_route(separable, tmp_path):
    """`serve --adapter tags=RUN`: /v1/classify answers as `predict` does, with the same key; chat
    requests for it are pointed there; the server loads no text model when it has only --task runs."""
    pytest.importorskip("fastapi", reason="serve needs the 'serve' extra")
    pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the 'test' extra)")
    from fastapi.testclient import TestClient

    from conftest import LOCAL
    from tunesmith.serve.app import Settings, create_app
    from tunesmith.serve.labels import load_classifiers
    from tunesmith.serve.server import parse_adapters, split_runs

    _, trained = separable
    adapters, tasks = split_runs(parse_adapters([f"tags={trained / 'run'}"]))
    assert adapters == {} and list(tasks) == ["tags"]
    app = create_app(
        None,
        None,
        Settings(keys=["sk-1"], max_prompt_tokens=40),
        load_classifiers(tasks, trust_remote_code=False),
    )
    c = TestClient(app, base_url=LOCAL)
    key = {"Authorization": "Bearer sk-1"}
    texts = [t["text"] for t in toy_classes(6, seed=7)]
    assert c.post("/v1/classify", json={"model": "tags", "input": texts}).status_code == 401
    r = c.post("/v1/classify", json={"model": "tags", "input": texts}, headers=key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["task"] == "classify" and body["usage"]["prompt_tokens"] > 0
    p = cli(
        "predict",
        "--adapter",
        str(trained / "run"),
        str(write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])),
    )
    want = [json.loads(x) for x in p.stdout.splitlines()]
    assert [d["index"] for d in body["data"]] == list(range(6))
    assert (
        [d["label"] for d in body["data"]]
        == [w["label"] for w in want]
        == [t["label"] for t in toy_classes(6, seed=7)]
    )
    for d, w in zip(body["data"], want):
        assert all(abs(d["probabilities"][k] - w["probabilities"][k]) < 1e-3 for k in w["probabilities"])
    one = c.post("/v1/classify", json={"model": "tags", "input": texts[0]}, headers=key).json()
    assert one["data"][0]["label"] == want[0]["label"]
    cases = [
        ("tags", ["word " * 60], 400, "input[0] is"),
        ("tags", ["ok", "  "], 400, "input[1] is empty; give the text to label"),
        ("tags", [], 400, "'input'"),
        ("notes", ["x"], 404, "model 'notes' does not exist; this server has: tags"),
    ]
    for model, given, status, says in cases:
        r = c.post("/v1/classify", json={"model": model, "input": given}, headers=key)
        assert r.status_code == status and says in r.json()["error"]["message"], (given, r.text)
    r = c.post(
        "/v1/chat/completions",
        json={"model": "tags", "messages": [{"role": "user", "content": "hi"}]},
        headers=key,
    )
    assert r.status_code == 400 and "POST /v1/classify" in r.json()["error"]["message"]
    assert c.get("/v1/models", headers=key).json()["data"][0]["id"] == "tags"
    srv = Server(
        ["--adapter", f"tags={trained / 'run'}"],
        tmp_path / "serve.log",
        env={"TUNESMITH_API_KEYS": SERVE_KEY},
    )  # the command's own wiring
    try:
        status, got = srv.post("/v1/classify", json.dumps({"model": "tags", "input": texts}).encode())
        assert status == 200 and [d["label"] for d in got["data"]] == [w["label"] for w in want]
        assert srv.health()["models"] == ["tags"]
    finally:
        srv.stop()
    assert "serving tags on http://127.0.0.1" in (tmp_path / "serve.log").read_text()


def test_gate_and_runs_compare_pair_two_classifier_evals_example_by_example(
    separable, tiny_model_dir, tmp_path
):
    """A barely trained classifier is gated against the trained one on the same test file: the gate
    fails on accuracy and macro-F1 (exit 3); the trained one against itself passes; another test file
    is refused by name; `runs compare` shows both evals' measures with the paired test."""
    _, trained = separable
    reg = str(tmp_path / "reg.db")
    test = write_jsonl(tmp_path / "test.jsonl", toy_classes(60, seed=9))
    m = str(tiny_model_dir("llama"))
    bad = ["--out", str(tmp_path / "bad"), "--max-steps", "1", "--lr", "1e-6", "--registry", reg]
    r = cli("train", "--task", "classify", "--model", m, "--data", str(trained / "cls.jsonl"), *bad)
    assert r.returncode == 0, r.stderr
    r = cli("eval", "--adapter", str(trained / "run"), "--data", str(test), "--out", str(tmp_path / "e1"),
            "--registry", reg, "--systems", "majority,tuned")  # fmt: skip
    assert r.returncode == 0, r.stderr
    gate = ["--gate", str(tmp_path / "e1" / "results.json")]
    r = cli("eval", "--adapter", str(tmp_path / "bad"), "--data", str(test), "--registry", reg, *gate)
    assert r.returncode == 3, r.stderr
    assert "gate failed: significantly worse than" in r.stdout, r.stdout
    assert "on the same 60 examples on accuracy, macro_f1" in r.stdout
    r = cli(
        "eval", "--adapter", str(trained / "run"), "--data", str(test), "--registry", "off", *gate, "--json"
    )
    verdict = json.loads(r.stdout)["gate"]
    assert r.returncode == 0 and verdict["passed"] and verdict["metrics"]["accuracy"]["change"] == 0
    other = write_jsonl(tmp_path / "other.jsonl", toy_classes(60, seed=10))
    r = cli("eval", "--adapter", str(trained / "run"), "--data", str(other), "--registry", "off", *gate)
    assert (
        r.returncode == 2 and "not the same frozen test set" in r.stderr and "example 1 differs" in r.stderr
    )
    evals = [x for x in json.loads(cli("runs", "--registry", reg, "--json").stdout) if x["kind"] == "eval"]
    assert len(evals) == 2
    r = cli("runs", "--registry", reg, "compare", evals[1]["id"], evals[0]["id"])
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  ")}
    assert "accuracy" in rows and "macro_f1" in rows and " p " in rows["accuracy"], r.stdout
    r = cli("pick", str(tmp_path / "bad"), str(trained / "run"), "--data", str(test), "--json")
    assert r.returncode == 0, r.stderr
    ranked = json.loads(r.stdout)
    assert ranked["metric"] == "accuracy" and [x["name"] for x in ranked["ranking"]] == ["run", "bad"]
    assert ranked["ranking"][1]["against_best"]["significant"] and ranked["ranking"][0]["ms_per_answer"] > 0
    r = cli("pick", str(trained / "run"), m, "--data", str(test))
    assert r.returncode == 2 and "runs trained with --task label or score texts" in r.stderr


def test_squared_error_falls_on_a_linear_target_and_values_come_back_in_its_units(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "reg.jsonl", toy_targets(120))
    r = cli(
        "train",
        "--task",
        "regress",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--registry",
        "off",
    )
    assert r.returncode == 0, r.stderr
    log = metrics(tmp_path / "run")
    start = json.loads((tmp_path / "run" / "tunesmith-run.json").read_text())["result"]["val_start"]
    vals = [x["val_rmse"] for x in log if "val_rmse" in x]
    assert vals[-1] < 0.5 * start["val_rmse"]
    space = json.loads((tmp_path / "run" / "labels.json").read_text())
    ys = [r["target"] for r in toy_targets(120)]
    assert space["task"] == "regress" and 30 < space["mean"] < 70 and space["std"] > 20
    assert len(ys) == 120
    r = cli("predict", "--adapter", str(tmp_path / "run"), str(data))
    values = [json.loads(x)["value"] for x in r.stdout.splitlines()]
    assert 0 < sum(values) / len(values) < 100  # in the target's units, not the scaled ones
    assert "RMSE" in r.stderr


def test_several_labels_per_text(tiny_model_dir, tmp_path):
    rng = random.Random(1)
    phrase = {"slow": "waited forever", "cold": "soup was cold", "rude": "waiter was rude"}
    rows = []
    for _ in range(120):
        labs = [c for c in phrase if rng.random() < 0.4]
        rows.append({"text": " ".join(rng.sample(WORDS, 3) + [phrase[c] for c in labs]), "labels": labs})
    data = write_jsonl(tmp_path / "ml.jsonl", rows)
    r = cli(
        "train",
        "--task",
        "multilabel",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--registry",
        "off",
    )
    assert r.returncode == 0, r.stderr
    assert max(x["val_micro_f1"] for x in metrics(tmp_path / "run") if "val_micro_f1" in x) >= 90
    r = cli("predict", "--adapter", str(tmp_path / "run"), str(data))
    first = json.loads(r.stdout.splitlines()[0])
    assert set(first["probabilities"]) == {"cold", "rude", "slow"}
    assert first["labels"] == sorted(c for c, p in first["probabilities"].items() if p > 0.5)


def test_what_is_refused_before_anything_loads(tiny_model_dir, tmp_path):
    m = str(tiny_model_dir("llama"))

    def train(data, *extra):
        return cli(
            "train",
            "--model",
            m,
            "--data",
            str(data),
            "--out",
            str(tmp_path / "x"),
            "--registry",
            "off",
            *extra,
        )

    one = write_jsonl(tmp_path / "one.jsonl", [{"text": f"t{i}", "label": "a"} for i in range(10)])
    r = train(one, "--task", "classify")
    assert (
        r.returncode == 2
        and r.stderr == f"error: --data {one}: one class only ('a'); a classifier needs two at least\n"
    )
    flat = write_jsonl(tmp_path / "flat.jsonl", [{"text": f"t{i}", "target": 3} for i in range(10)])
    r = train(flat, "--task", "regress")
    assert r.stderr == f"error: --data {flat}: every target is 3; a model learns nothing from a constant\n"
    tr = write_jsonl(tmp_path / "d" / "train.jsonl", toy_classes(20))
    val = write_jsonl(
        tmp_path / "d" / "val.jsonl", [{"text": "x", "label": "yes"}, {"text": "y", "label": "maybe"}]
    )
    r = train(tmp_path / "d", "--task", "classify")
    assert r.stderr == (
        f"error: {val}:2: label 'maybe' was never seen in training (the classes are 'no', 'yes'); "
        "--other CLASS reads such labels as one of them\n"
    )
    r = train(tmp_path / "d", "--task", "classify", "--other", "maybe")
    assert r.stderr == "error: --other 'maybe': not among the training classes ('no', 'yes')\n"
    r = train(tr, "--task", "regress", "--other", "no")
    assert r.stderr == "error: --other is for --task classify or multilabel\n"
    r = train(tr, "--task", "regress")
    assert r.stderr == f'error: {tr}:1: a classify example; --task regress trains on {{"text", "target"}}\n'
    chats = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
    )
    r = train(chats, "--task", "classify")
    assert r.stderr.startswith(f"error: --data {chats}:1: --task trains on labelled examples")
    bad = write_jsonl(tmp_path / "bad.jsonl", [*toy_targets(5), {"text": "x", "target": "n/a"}])
    r = train(bad, "--task", "regress")
    assert r.returncode != 0 and f"{bad}:6: target: 'n/a' is not a number" in r.stderr
    r = train(tr, "--task", "classify", "--method", "prompt-tuning")
    assert r.stderr == "error: --task classify trains with --method lora, dora or full, not prompt-tuning\n"
    r = train(tr, "--task", "classify", "--huber", "1")
    assert r.stderr == "error: --huber is a positive delta, for --task regress\n"
    assert not (tmp_path / "x").exists()
    r = train(tmp_path / "d", "--task", "classify", "--other", "no", "--max-steps", "1")
    assert r.returncode == 0, r.stderr  # the validation file's 'maybe' read as 'no'


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_killed_classifier_resumes_to_the_same_weights(tiny_model_dir, tmp_path, method):
    data = write_jsonl(tmp_path / "cls.jsonl", toy_classes(64))
    args = [
        "--task",
        "classify",
        "--method",
        method,
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(data),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--save-every",
        "3",
        "--registry",
        "off",
    ]
    whole = tmp_path / "whole"
    assert cli("train", *args, "--out", str(whole)).returncode == 0
    run = tmp_path / "killed"
    assert train_then_sigkill(args, run, kill_at=5) != 0
    r = cli("train", "--resume", str(run))
    assert r.returncode == 0, r.stderr
    a = [x for x in metrics(whole) if "loss" in x]
    b = [x for x in metrics(run) if "loss" in x]
    assert [round(x["loss"], 5) for x in a] == [round(x["loss"], 5) for x in b]
    assert json.loads((run / "labels.json").read_text()) == json.loads((whole / "labels.json").read_text())


def test_thousands_of_classes_are_costed_before_training():
    from tunesmith.train.classify import many_classes

    space = {"classes": [f"c{i}" for i in range(1200)], "counts": [2] * 700 + [40] * 500}
    said = many_classes(space, 576)
    assert said.startswith("1200 classes: the head is 1200 x 576 = 0.7 M weights trained in full (8 MiB")
    assert "the median class has 2 training examples, and 700 have fewer than 5" in said


def test_measures_match_a_hand_count():
    from tunesmith.scoring.labelled import calibration_error, measure, paired, per_class, with_intervals

    gold, pred = [0, 0, 1, 1, 2, 2, 2, 0], [0, 1, 1, 1, 2, 0, 2, 0]
    rows, cm = per_class(gold, pred, ["a", "b", "c"])
    assert cm == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]  # rows: the true class, counted by hand
    assert [(r["class"], r["precision"], r["recall"], r["f1"], r["support"]) for r in rows] == [
        ("a", 66.67, 66.67, 66.67, 3),
        ("b", 66.67, 100.0, 80.0, 2),
        ("c", 100.0, 66.67, 80.0, 3),
    ]
    m = measure("classify", gold, pred, 3)
    assert m["accuracy"] == 75.0 and m["macro_f1"] == pytest.approx((66.667 + 80 + 80) / 3, abs=1e-2)
    ci = with_intervals("classify", gold, pred, 3)["ci95"]["accuracy"]
    assert ci[0] < 75 < ci[1]
    same = paired("classify", gold, pred, pred, 3)["accuracy"]
    assert same["change"] == 0 and same["p"] == 1.0 and not same["significant"]
    r = measure("regress", [1, 2, 3, 4], [1.1, 1.9, 3.2, 3.8])
    assert (
        r["mse"] == pytest.approx(0.025)
        and r["mae"] == pytest.approx(0.15)
        and r["r2"] == pytest.approx(0.98)
    )
    assert r["spearman"] == pytest.approx(1.0) and r["pearson"] == pytest.approx(0.99085, abs=1e-5)
    ml = measure("multilabel", [[1, 0], [0, 1], [1, 1]], [[1, 0], [0, 0], [1, 1]])
    assert ml["micro_f1"] == pytest.approx(600 / 7) and ml["exact_match"] == pytest.approx(200 / 3)
    # two answers: 0.9 sure and right (bin 9), 0.6 sure and wrong (bin 6): (|1-0.9| + |0-0.6|) / 2
    assert calibration_error([0, 1], [[0.9, 0.1], [0.6, 0.4]]) == 35.0


def test_eval_of_a_classifier_against_its_baselines(tiny_model_dir, tmp_path):
    pytest.importorskip("sklearn", reason="the TF-IDF baseline needs scikit-learn (the eval extra)")
    data = write_jsonl(tmp_path / "train.jsonl", toy_classes(120))
    r = cli(
        "train",
        "--task",
        "classify",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--registry",
        "off",
    )
    assert r.returncode == 0, r.stderr
    test = write_jsonl(tmp_path / "test.jsonl", toy_classes(40, seed=7))
    reg = str(tmp_path / "reg.db")
    r = cli(
        "eval",
        "--adapter",
        str(tmp_path / "run"),
        "--data",
        str(test),
        "--out",
        str(tmp_path / "ev"),
        "--registry",
        reg,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split() == ["measure", "majority", "tfidf", "tuned"]
    from tunesmith.registry.db import Registry

    ev = Registry(reg).get(Registry(reg).find("ev"))
    assert ev["kind"] == "eval" and ev["result"]["task"] == "classify" and ev["headline_metric"] == "accuracy"
    assert ev["parents"][0]["relation"] == "evaluated" and ev["parents"][0]["parent_path"] == str(
        (tmp_path / "run").resolve()
    )
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    by = {s["system"]: s["metrics"] for s in res["systems"]}
    assert by["tuned"]["accuracy"] >= 95 and by["majority"]["accuracy"] == 50.0
    assert res["comparisons"]["majority"]["accuracy"]["better"]  # tuned significantly better
    gold = [e["gold"] for e in res["examples"]]
    pred = [e["label"] for e in res["examples"]]
    hand = [
        [sum(g == a and p == b for g, p in zip(gold, pred)) for b in ("no", "yes")] for a in ("no", "yes")
    ]
    assert res["confusion"] == {"classes": ["no", "yes"], "matrix": hand}
    assert 'id="confusion"' in (tmp_path / "ev" / "report.html").read_text()
    unseen = write_jsonl(
        tmp_path / "unseen.jsonl", [{"text": "a", "label": "no"}, {"text": "b", "label": "maybe"}]
    )
    r = cli("eval", "--adapter", str(tmp_path / "run"), "--data", str(unseen))
    assert r.returncode == 2 and r.stderr == (
        f"error: {unseen}:2: label 'maybe' was never seen in training (the classes are 'no', 'yes'); "
        "--other CLASS reads such labels as one of them\n"
    )
    r = cli("eval", "--adapter", str(tmp_path / "run"), "--data", str(unseen), "--other", "no", "--json")
    mapped = json.loads(r.stdout)
    assert [e["gold"] for e in mapped["examples"]] == ["no", "no"]
    assert mapped["notes"] == ["1 test examples had labels the training never saw, read as 'no' (--other)"]
    r = cli("eval", "--adapter", str(tmp_path / "run"), "--data", str(unseen), "--other", "other")
    assert r.stderr == "error: --other 'other': not among the training classes ('no', 'yes')\n"
    r = cli(
        "eval",
        "--adapter",
        str(tmp_path / "run"),
        "--data",
        str(test),
        "--systems",
        "zero-shot,few-shot:2,tuned",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split() == ["measure", "zero-shot", "few-shot:2", "tuned"]
    r = cli("eval", "--adapter", str(tmp_path / "run"), "--data", str(test), "--systems", "base,tuned")
    assert r.stderr == (
        "error: --systems 'base': a --task classify eval compares majority, tfidf, zero-shot, few-shot:K, "
        "tuned\n"
    )


ENCODERS = ["bert", "roberta", "deberta-v2", "modernbert"]


def tiny_encoder(folder, family: str = "bert"):
    """An encoder of `family` with 2 layers of random weights and a WordPiece vocabulary learned here."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        [" ".join(WORDS) + " the budget is good the team is bad"] * 20,
        trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    sizes = dict(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, pad_token_id=fast.pad_token_id)  # fmt: skip
    if family == "modernbert":  # its own names for the sizes, and alternating global and local attention
        ids = dict(cls_token_id=fast.cls_token_id, sep_token_id=fast.sep_token_id,
                   bos_token_id=fast.cls_token_id, eos_token_id=fast.sep_token_id)  # fmt: skip
        cfg = AutoConfig.for_model(family, **sizes, **ids, max_position_embeddings=128,
                                   global_attn_every_n_layers=2, local_attention=16)  # fmt: skip
    else:  # roberta's positions start after the padding id, so it needs two more
        cfg = AutoConfig.for_model(family, **sizes, max_position_embeddings=130)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ENCODERS)
def test_an_encoder_learns_the_task_too(tmp_path, family):
    model = tiny_encoder(tmp_path / f"tiny-{family}", family)
    data = write_jsonl(tmp_path / "cls.jsonl", toy_classes(120))
    r = cli(
        "train",
        "--task",
        "classify",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "5e-3",
        "--registry",
        "off",
    )
    assert r.returncode == 0, r.stderr
    assert max(x["val_accuracy"] for x in metrics(tmp_path / "run") if "val_accuracy" in x) >= 95
    r = cli(
        "predict",
        "--adapter",
        str(tmp_path / "run"),
        str(write_jsonl(tmp_path / "t.jsonl", toy_classes(20, seed=3))),
    )
    assert r.returncode == 0 and r.stderr.strip().endswith("agree with the 20 given labels")
    test = str(write_jsonl(tmp_path / "test.jsonl", toy_classes(20, seed=4)))
    r = cli(
        "eval", "--adapter", str(tmp_path / "run"), "--data", test, "--systems", "few-shot:2,tuned", "--json"
    )
    res = json.loads(r.stdout)
    assert [x["system"] for x in res["systems"]] == ["tuned"]
    assert (
        res["notes"][0].startswith("few-shot:2 baseline skipped:") and "no chat template" in res["notes"][0]
    )
    r = cli("plan", "--task", "classify", "--model", str(model), "--data", str(data), "--json")
    plan = json.loads(r.stdout)
    assert r.returncode == 0 and plan["fits"] and plan["examples"] == 108 and plan["trainable"] > 0, r.stdout


def test_the_prompting_baseline_picks_the_likeliest_label_name():
    """Crafted models whose next token is always one of a class name's tokens: the baseline must name
    that class for every text, with its probability the highest, whatever the text."""
    from types import SimpleNamespace

    import torch

    from conftest import make_tokenizer
    from tunesmith.data.records import Example
    from tunesmith.eval.prompted_labels import predict_prompted, shots

    tok = make_tokenizer("llama")

    class Crafted(torch.nn.Module):
        def __init__(self, favoured: list[int]):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, for the device
            self.favoured = favoured

        def forward(
            self, input_ids, attention_mask=None, logits_to_keep=0, past_key_values=None, use_cache=None
        ):
            logits = torch.zeros(*input_ids.shape, len(tok))
            logits[..., self.favoured] = 5.0
            cache = SimpleNamespace(batch_repeat_interleave=lambda n: None)
            return SimpleNamespace(logits=logits[:, -logits_to_keep:], past_key_values=cache)

    texts = ["the budget is good", "the team is bad", "a meeting"]
    for name in ("yes", "no"):
        ids, probs = predict_prompted(
            Crafted(tok(name, add_special_tokens=False)["input_ids"]), tok, texts, ["no", "yes"], []
        )
        assert ids == [["no", "yes"].index(name)] * 3
        assert all(p[ids[0]] > 0.99 for p in probs)
    train = [
        Example([{"role": "user", "content": f"t{i}"}], "f", i, label=lab) for i, lab in enumerate("aaab")
    ]
    turns = shots(train, ["a", "b"], 3)
    assert [t["content"] for t in turns] == ["t0", "a", "t3", "b", "t1", "a"]  # round-robin over the classes


def test_the_prompting_baseline_reads_the_prompt_once_and_scores_as_one_pass_over_each_name(tiny_model_dir):
    """label_scores shares the prompt's cache among the names; it must give what one full pass over the
    prompt and each name gives, for names of one and of several tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.eval.prompted_labels import conversation, label_scores
    from tunesmith.models.chat import prompt_ids

    d = tiny_model_dir("llama")
    model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
    classes = ["yes", "no", "negative review", "not applicable at all"]
    conv = conversation(
        "the budget is good",
        classes,
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "no"}],
    )
    want = []
    for c in classes:
        ids = prompt_ids(tok, conv)
        name = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids + name])).logits[0].float(), -1)
        want.append(sum(float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(name)))
    assert len({len(tok(c, add_special_tokens=False)["input_ids"]) for c in classes}) > 1
    assert label_scores(model, tok, conv, classes) == pytest.approx(want, abs=1e-4)


def test_merge_folds_the_adapter_and_head_into_one_model_and_gguf_says_it_does_not_apply(
    tiny_model_dir, tmp_path
):
    data = write_jsonl(tmp_path / "cls.jsonl", toy_classes(40))
    r = cli(
        "train",
        "--task",
        "classify",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--registry",
        "off",
    )
    assert r.returncode == 0, r.stderr
    r = cli(
        "merge", "--adapter", str(tmp_path / "run"), "--out", str(tmp_path / "merged"), "--registry", "off"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "merged" / "labels.json").read_text())["classes"] == ["no", "yes"]
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    before = [
        json.loads(x)
        for x in cli("predict", "--adapter", str(tmp_path / "run"), str(data)).stdout.splitlines()
    ]
    after = [
        json.loads(x)
        for x in cli("predict", "--adapter", str(tmp_path / "merged"), str(data)).stdout.splitlines()
    ]
    for a, b in zip(before, after):
        assert a["label"] == b["label"]
        assert all(abs(a["probabilities"][c] - b["probabilities"][c]) < 1e-3 for c in ("no", "yes"))
    r = cli("export", "--adapter", str(tmp_path / "run"), "--out", str(tmp_path / "x.gguf"))
    assert (
        r.returncode == 2 and "GGUF export does not apply" in r.stderr and not (tmp_path / "x.gguf").exists()
    )


def test_a_learning_curve_of_a_classifier(tiny_model_dir, tmp_path):
    """`curve --task classify`: nested subsets, each point the tuned accuracy on the validation file
    with its interval; a text metric is refused before anything trains."""
    d = tmp_path / "d"
    write_jsonl(d / "train.jsonl", toy_classes(80))
    write_jsonl(d / "val.jsonl", toy_classes(20, seed=5))
    m = str(tiny_model_dir("llama"))
    args = ["curve", "--task", "classify", "--model", m, "--data", str(d), "--out", str(tmp_path / "c"),
            "--epochs", "3", "--batch-size", "8", "--registry", "off"]  # fmt: skip
    r = cli(*args, "--fractions", "0.1,1", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["metric"] == "accuracy" and [p["examples"] for p in res["points"]] == [8, 80]
    assert res["points"][-1]["mean"] >= 90 and all(
        p["ci"][0] <= p["mean"] <= p["ci"][1] for p in res["points"]
    )
    assert res["sentence"].startswith(("still rising at 80 examples: accuracy", "flat from 8 to 80"))
    r = cli(*args, "--metric", "rougeL")
    assert (
        r.returncode == 2 and r.stderr == "error: --metric rougeL: a --task classify curve draws accuracy\n"
    )
