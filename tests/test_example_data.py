"""The shipped example data: valid, split by meeting, in the house style, reproducible."""

import json
import subprocess
import sys

import pytest

from conftest import EXAMPLES, ROOT, SHARED
from tunesmith.data.check import check
from tunesmith.scoring.style import check_style, load_style

SPLITS = ("train", "val", "test")


def rows(split):
    return [json.loads(x) for x in (EXAMPLES / f"{split}.jsonl").read_text().splitlines()]


def test_counts_valid_and_no_problems():
    issues, valid = check([str(EXAMPLES / f"{s}.jsonl") for s in SPLITS])
    assert issues == [] and valid == 200
    assert [len(rows(s)) for s in SPLITS] == [150, 20, 30]


def test_no_meeting_straddles_splits():
    meetings = {s: {r["meeting"] for r in rows(s)} for s in SPLITS}
    assert not meetings["train"] & meetings["val"]
    assert not meetings["train"] & meetings["test"]
    assert not meetings["val"] & meetings["test"]


def test_every_note_follows_the_house_style():
    rules = load_style(EXAMPLES / "style.yaml")
    assert len(rules) == 5
    for s in SPLITS:
        for r in rows(s):
            result = check_style(rules, r["messages"][-1]["content"])
            assert all(result.values()), (r["meeting"], result)


def test_licence_and_attribution_ship_with_the_data():
    assert "MIT License" in (EXAMPLES / "LICENSE-QMSum").read_text()
    assert "QMSum" in (EXAMPLES / "README.md").read_text()


@pytest.mark.skipif(not (SHARED / "data" / "qmsum").is_dir(), reason="../shared/data/qmsum is not present")
def test_build_script_reproduces_the_files(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_example_data.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "style.yaml", "README.md"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name
