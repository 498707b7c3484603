"""Labelled data (data/labels.py): a text with a class, classes or a number, in JSONL or CSV under the
data set's own column names; what `data check` says about its classes and targets; a stratified split
by `data prepare`; and a one-line refusal where text is trained."""

from __future__ import annotations

import json

from conftest import cli, write_jsonl

RARE = "(fewer than 5: hard to learn and to measure) (warning)"


def test_check_reports_classes_variants_rare_and_eval_only_classes(tmp_path):
    rows = [{"text": f"review {i}", "label": ["positive", "negative", "neutral"][i % 3]} for i in range(60)]
    rows += [
        {"text": "odd one", "label": "Positive "},
        {"text": "rare", "label": "mixed"},
        {"text": "bad", "label": ""},
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(
        tmp_path / "test.jsonl", [{"text": "t", "label": "sarcastic"}, {"text": "u", "label": "positive"}]
    )
    r = cli("data", "check", str(train), str(test))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{train}:63: label: expected a class name (a non-empty string)",
        f"{train}:61: labels 'Positive ' and 'positive' differ only by case or spaces (warning)",
        f"{train}:61: class 'Positive ' has 1 training example {RARE}",
        f"{train}:62: class 'mixed' has 1 training example {RARE}",
        f"{test}:1: class 'sarcastic' is only in an evaluation file: no model can learn it (warning)",
        f"{train}, {test}: only 64 examples; fine-tuning usually needs 100+ to help (warning)",
        "6 classes: positive 21, negative 20, neutral 20, Positive  1, mixed 1, sarcastic 1",
    ]
    r = cli("data", "check", "--json", str(train), str(test))
    rep = json.loads(r.stdout)
    assert rep["summary"] == [
        "6 classes: positive 21, negative 20, neutral 20, Positive  1, mixed 1, sarcastic 1"
    ]


def test_check_reports_targets_non_numbers_and_outliers(tmp_path):
    rows = [
        {"text": f"r{i}", "target": str(3 + (i % 3) * 0.5)} for i in range(30)
    ]  # numbers as text, as CSV has them
    rows += [{"text": "x", "target": 99}, {"text": "y", "target": "n/a"}, {"text": "z", "target": True}]
    f = write_jsonl(tmp_path / "scores.jsonl", rows)
    r = cli("data", "check", str(f))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{f}:32: target: 'n/a' is not a number",
        f"{f}:33: target: True is not a finite number",
        f"{f}:31: target 99 is an outlier (middle half: 3 to 4) (warning)",
        f"{f}: only 31 examples; fine-tuning usually needs 100+ to help (warning)",
        "target: 31 values from 3 to 99, mean 6.58065, standard deviation 16.8782",
    ]
    same = write_jsonl(tmp_path / "same.jsonl", [{"text": f"r{i}", "target": 2} for i in range(3)])
    assert "every target is 2: nothing to learn (warning)" in cli("data", "check", str(same)).stdout


def test_a_csv_export_under_its_own_column_names_needs_no_script(tmp_path):
    f = tmp_path / "reviews.csv"
    f.write_text(
        "review,title,stars,concerns\n"
        '"Cold soup, slow waiter",Meh,2,"[""slow service"", ""cold food""]"\n'
        '"Lovely evening",Great,5,"[]"\n'
        '"Waited an hour",Slow,1,"[""slow service""]"\n'
    )
    r = cli(
        "data", "check", str(f), "--template", "Review: {review}\nTitle: {title}", "--label-field", "concerns"
    )
    assert r.returncode == 0, r.stdout
    assert "2 classes: slow service 2, cold food 1" in r.stdout
    r = cli(
        "data",
        "prepare",
        str(f),
        "--text-field",
        "review",
        "--target-field",
        "stars",
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 0, r.stderr
    rows = [
        json.loads(x)
        for s in ("train", "val", "test")
        for x in (tmp_path / "o" / f"{s}.jsonl").read_text().splitlines()
    ]
    assert sorted((x["text"], x["target"]) for x in rows) == [
        ("Cold soup, slow waiter", 2.0),
        ("Lovely evening", 5.0),
        ("Waited an hour", 1.0),
    ]
    r = cli("data", "check", str(f), "--text-field", "body", "--label-field", "stars")
    assert r.returncode == 1 and r.stdout.splitlines()[0] == (
        f"{f}:2: body: missing (--text-field body); the record has concerns, review, stars, title"
    )
    r = cli("data", "check", str(f), "--template", "Review: {body}", "--label-field", "stars")
    assert r.stdout.splitlines()[0] == f"{f}:2: body: missing: --template names {{body}}"
    # the same mapping for generation data: a prompt and an answer under other names
    g = tmp_path / "tickets.csv"
    g.write_text("question,reply\nWhere is my order?,It ships today.\n")
    r = cli("data", "check", str(g), "--prompt-field", "question", "--completion-field", "reply")
    assert r.returncode == 0 and r.stdout.strip().endswith("1 valid examples, 0 error(s), 1 warning(s)"), (
        r.stdout
    )


def test_prepare_splits_classes_in_proportion_and_text_training_refuses_labels(tmp_path, tiny_model_dir):
    rows = [{"text": f"x {i}", "label": (["a"] * 7 + ["b"] * 2 + ["c"])[i % 10]} for i in range(100)]
    f = write_jsonl(tmp_path / "cls.jsonl", rows)
    r = cli("data", "prepare", str(f), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    counts = {}
    for s in ("train", "val", "test"):
        labels = [json.loads(x)["label"] for x in (tmp_path / "o" / f"{s}.jsonl").read_text().splitlines()]
        counts[s] = {c: labels.count(c) for c in "abc"}
    assert counts == {
        "train": {"a": 56, "b": 16, "c": 8},
        "val": {"a": 7, "b": 2, "c": 1},
        "test": {"a": 7, "b": 2, "c": 1},
    }
    r = cli(
        "train", "--model", str(tiny_model_dir("llama")), "--data", str(f), "--out", str(tmp_path / "run")
    )
    assert r.returncode == 2 and r.stderr.startswith(
        f"error: --data {f}:1: a labelled example (text and classify label)"
    )
