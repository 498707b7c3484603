"""`tunesmith data prepare`: every format round-trips, groups never cross splits, planted
duplicates and leaks are caught, outputs replace the old ones only when complete."""

import csv
import json
from pathlib import Path

import pytest

from conftest import EXAMPLES, cli, write_jsonl
from tunesmith.data import prepare as prep
from tunesmith.data.formats import ReadOptions
from tunesmith.errors import UserError

USER, ANSWER = "Summarize: the team met on Monday.", "Meeting Summary: The team met."
CHAT = [{"role": "user", "content": USER}, {"role": "assistant", "content": ANSWER}]
SHAPES = {
    "chat": {"messages": CHAT},
    "prompt-completion": {"prompt": USER, "completion": ANSWER},
    "alpaca": {"instruction": "Summarize:", "input": "the team met on Monday.", "output": ANSWER},
    "sharegpt": {"conversations": [{"from": "human", "value": USER}, {"from": "gpt", "value": ANSWER}]},
}
EXPECTED_USER = {"alpaca": "Summarize:\n\nthe team met on Monday."}


def write_as(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        keys = list(rows[0])
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_format_round_trips_to_chat_jsonl(shape, suffix, tmp_path):
    rows = []
    for i in range(4):
        r = json.loads(json.dumps(SHAPES[shape]).replace("Monday", f"day {i} of the month number {i * 7}"))
        rows.append({**r, "meeting": f"m{i}"})
    src = write_as(tmp_path / f"src{suffix}", rows)
    r = cli(
        "data", "prepare", str(src), "--out", str(tmp_path / "out"), "--split", "2,1,1", "--near-dup", "0.95"
    )
    assert r.returncode == 0, r.stderr
    got = [
        json.loads(x)
        for s in ("train", "val", "test")
        for x in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()
    ]
    assert len(got) == 4
    for g in got:
        i = int(g["meeting"][1:])
        user = EXPECTED_USER.get(shape, USER).replace("Monday", f"day {i} of the month number {i * 7}")
        assert g["messages"] == [{"role": "user", "content": user}, {"role": "assistant", "content": ANSWER}]


def test_folder_pairs_with_template_round_trip(tmp_path):
    d = tmp_path / "notes"
    (d / "inputs").mkdir(parents=True)
    (d / "outputs").mkdir()
    for i in range(3):
        (d / "inputs" / f"call{i}.txt").write_text(
            f"Alice: item {i} is done.\r\n\r\n\r\n\r\nBob: ok\u200b.  \n"
        )
        (d / "outputs" / f"call{i}.md").write_text(f"Meeting Summary: Item {i} is done.\n")
    r = cli(
        "data",
        "prepare",
        str(d),
        "--out",
        str(tmp_path / "out"),
        "--split",
        "3,0,0",
        "--template",
        "Notes for {name}:\n{input}",
        "--system",
        "House style.",
    )
    assert r.returncode == 0, r.stderr
    rows = sorted(
        (json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()),
        key=lambda r: r["source"],
    )
    assert rows[0]["messages"] == [
        {"role": "system", "content": "House style."},
        {"role": "user", "content": "Notes for call0:\nAlice: item 0 is done.\n\nBob: ok."},  # cleaned
        {"role": "assistant", "content": "Meeting Summary: Item 0 is done."},
    ]


def test_groups_never_cross_splits_and_counts_hold(tmp_path):
    prep.prepare(
        [str(EXAMPLES / "train.jsonl"), str(EXAMPLES / "val.jsonl"), str(EXAMPLES / "test.jsonl")],
        tmp_path / "out",
        split_spec="0.7,0.15,0.15",
        group_by="meeting",
        seed=5,
    )
    meetings = {
        s: {json.loads(x)["meeting"] for x in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()}
        for s in ("train", "val", "test")
    }
    assert not (meetings["train"] & meetings["val"]) and not (meetings["train"] & meetings["test"])
    assert not (meetings["val"] & meetings["test"])
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    n = {s: card["splits"][s]["examples"] for s in ("train", "val", "test")}
    assert sum(n.values()) == 200 and n["val"] >= 30 and n["test"] >= 30
    assert card["leak_check"]["across_splits"] == []


def test_planted_duplicates_and_eval_leaks_are_dropped_with_reasons(tmp_path):
    rows = [json.loads(x) for x in (EXAMPLES / "train.jsonl").read_text().splitlines()[:30]]
    test_rows = [json.loads(x) for x in (EXAMPLES / "test.jsonl").read_text().splitlines()[:2]]
    near = json.loads(json.dumps(rows[4]))
    near["messages"][1]["content"] = near["messages"][1]["content"].replace(
        "Meeting Summary:", "Meeting Summary: In short,"
    )
    leaked = json.loads(json.dumps(test_rows[1]))
    leaked["messages"][0]["content"] += " Thanks."
    empty = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\u200b \n "}]}
    src = write_jsonl(tmp_path / "src.jsonl", rows + [rows[2], near, test_rows[0], leaked, empty, '{"broken'])
    ev = write_jsonl(tmp_path / "eval.jsonl", test_rows)
    card = prep.prepare([str(src)], tmp_path / "out", split_spec="0.8,0.1,0.1", eval_sets=[str(ev)])
    reasons = {d["where"].rsplit(":", 1)[1]: d["reason"] for d in card["dropped"]}
    assert reasons["31"] == f"exact duplicate of {src}:3"
    assert reasons["32"].startswith("near duplicate (Jaccard 0.") and reasons["32"].endswith(f"of {src}:5")
    assert reasons["33"] == f"leak: same input as --eval-set {ev}:1"
    assert reasons["34"].startswith("leak: near duplicate (Jaccard") and reasons["34"].endswith(
        f"--eval-set {ev}:2"
    )
    assert reasons["35"] == "empty after cleaning"
    assert reasons["36"].startswith("invalid: invalid JSON")
    assert sum(s["examples"] for s in card["splits"].values()) == 30
    text = (tmp_path / "out" / "card.md").read_text()
    assert f"- {src}:32: near duplicate" in text and "## Dropped: 6" in text


def test_mix_file_weights_tasks_and_train_honours_it(tmp_path, tiny_model_dir):
    from conftest import toy_examples

    write_jsonl(tmp_path / "a" / "train.jsonl", toy_examples(10))
    write_jsonl(tmp_path / "b" / "train.jsonl", toy_examples(10, seed=3))
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        "datasets:\n  - {path: a/train.jsonl, task: notes, weight: 2}\n  - {path: b/train.jsonl, task: "
        "other, weight: 0.5}\n"
    )
    card = prep.prepare([str(mix)], tmp_path / "out", split_spec="1.0,0,0", near_dup=1.0)
    tasks = card["splits"]["train"]["tasks"]
    assert tasks["notes"] == 20 and 0 < tasks["other"] < 10
    # train reads the mix directly too
    (tmp_path / "a" / "val.jsonl").write_text((tmp_path / "a" / "train.jsonl").read_text())
    r = cli(
        "train",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(mix),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "4",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert 20 < json.loads(r.stdout)["examples"] < 30
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  - {path: a/train.jsonl, wieght: 2}\n")
    with pytest.raises(UserError, match=r"datasets\[0\]: expected keys path \(required\), task, weight"):
        prep.Mix.load(bad)


def test_interrupted_prepare_keeps_previous_output(tmp_path, monkeypatch):
    src = write_jsonl(
        tmp_path / "s.jsonl", [json.loads(x) for x in (EXAMPLES / "val.jsonl").read_text().splitlines()]
    )
    out = tmp_path / "out"
    prep.prepare([str(src)], out, split_spec="10,5,5")
    before = (out / "train.jsonl").read_bytes()
    with pytest.raises(
        UserError, match="already holds a prepared data set; choose a new --out, or pass --overwrite"
    ):
        prep.prepare([str(src)], out, split_spec="10,5,5")

    def crash(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prep, "card_text", crash)
    with pytest.raises(RuntimeError):
        prep.prepare([str(src)], out, split_spec="12,4,4", overwrite=True)
    assert (out / "train.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.jsonl"]


def test_bad_split_and_group_field(tmp_path):
    src = write_jsonl(
        tmp_path / "s.jsonl", [json.loads(x) for x in (EXAMPLES / "val.jsonl").read_text().splitlines()]
    )
    with pytest.raises(UserError, match=r"--split .0.5,0.2.: expected three values"):
        prep.prepare([str(src)], tmp_path / "o", split_spec="0.5,0.2")
    with pytest.raises(UserError, match=r"--split 100,5,5: asks for 110 examples but only 20 remain"):
        prep.prepare([str(src)], tmp_path / "o", split_spec="100,5,5")
    with pytest.raises(UserError, match=r"s.jsonl:1: --group-by speaker: the example has no 'speaker' field"):
        prep.prepare([str(src)], tmp_path / "o", group_by="speaker")
    assert not (tmp_path / "o").exists()
    assert ReadOptions().template == "{input}"
