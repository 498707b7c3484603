"""`tunesmith errors` (issue 32, part 1): an eval's failures as groups with counts, shares, means and worst
examples, on crafted results whose every number is known; two evals compared group by group, paired;
the command's text and JSON; and a real eval that keeps the test examples' metadata for slicing."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import cli, write_jsonl
from tunesmith.errors import UserError
from tunesmith.eval import errors
from tunesmith.registry.db import Registry

ROUGE = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 15.0, 25.0, 35.0]


def example(i: int, rouge: float) -> dict:
    return {
        "path": "test.jsonl",
        "line": i + 1,
        "input": f"transcript {i}",
        "reference": f"notes {i}",
        "output": f"output {i}",
        "prompt_tokens": 100 * (i + 1),
        "new_tokens": 20,
        "stopped": i not in (0, 9),  # two ran to the limit
        "scores": {"rougeL": rouge, "length_ratio": 2.0 if i in (0, 1) else (0.2 if i == 2 else 1.0)},
        "style": {"has heading": i not in (0, 1, 2, 9), "under 200 words": True},
        "format_ok": i not in (0, 1, 2, 9),
        "meta": {"topic": "budget" if i % 2 == 0 else "hiring", "id": f"m{i}"},
    }


def system(values=ROUGE, name="tuned") -> dict:
    return {"system": name, "data": "test.jsonl", "decoding": {"greedy": True, "max_new_tokens": 64},
            "examples": [example(i, v) for i, v in enumerate(values)]}  # fmt: skip


def by_name(a: dict) -> dict:
    return {g["name"]: g for g in a["groups"]}


def test_groups_have_the_counts_means_and_worst_examples_of_the_crafted_eval():
    a = errors.analyse(system())
    assert a["metric"] == "rougeL" and a["n"] == 12 and a["mean"] == pytest.approx(sum(ROUGE) / 12, abs=0.01)
    g = by_name(a)
    style = g["style: has heading"]  # examples 0, 1, 2, 9: rougeL 10, 20, 30, 15
    assert style["count"] == 4 and style["share"] == 33.3 and style["failure"] is True
    assert style["mean"] == 18.75 and style["rest"] == pytest.approx((sum(ROUGE) - 75) / 8, abs=0.01)
    # the whole set's mean if these four scored like the other eight: (525 + 4 * (rest - mean)) / 12 - 43.75
    assert style["if_like_rest"] == pytest.approx((525 + 4 * (56.25 - 18.75)) / 12 - 43.75, abs=0.01)
    assert [w["example"] for w in style["worst"]] == [1, 10, 2] and style["worst"][0]["value"] == 10.0
    assert "style: under 200 words" not in g  # a rule nobody broke is no group
    assert g["did not stop (ran to --max-new-tokens)"]["members"] == [0, 9]
    assert g["too long (over 1.5x the reference's words)"]["members"] == [0, 1]
    assert g["too short (under 0.5x the reference's words)"]["members"] == [2]
    assert g["bottom quarter of the metric (<= 21.2)"]["members"] == [0, 1, 9]  # q1 of the 12: 21.25
    assert g["topic = budget"]["count"] == 6 and g["topic = hiring"]["count"] == 6
    assert not any(name.startswith("id =") for name in g)  # a field unique to each example is not a slice
    thirds = {n: g[n]["count"] for n in g if n.startswith("inputs of")}  # 100 ... 1,200 prompt tokens
    assert thirds == {
        "inputs of <= 433 tokens": 4,
        "inputs of 433-867 tokens": 4,
        "inputs of > 867 tokens": 4,
    }
    costs = [x["if_like_rest"] for x in a["groups"]]
    assert costs == sorted(costs, reverse=True)  # costliest first
    assert a["groups"][0]["name"] == "style: has heading" and style["if_like_rest"] == 12.5


def test_an_eval_without_style_or_metadata_still_gets_the_groups_it_can_make():
    s = system()
    for ex in s["examples"]:
        del ex["style"], ex["format_ok"], ex["meta"]
    names = {g["name"] for g in errors.analyse(s)["groups"]}
    assert not any(n.startswith(("style:", "topic")) for n in names)
    assert "did not stop (ran to --max-new-tokens)" in names and any(n.startswith("inputs of") for n in names)
    with pytest.raises(UserError, match="--metric bleu: not scored in this eval"):
        errors.analyse(s, "bleu")


def test_two_evals_compared_group_by_group_paired():
    before = system()
    after = copy.deepcopy(before)
    for i, ex in enumerate(after["examples"]):
        ex["stopped"] = True  # v2 stops everywhere
        if i in (0, 1, 2, 9):  # and the four that broke the heading rule now keep it, scoring 40 more
            ex["style"]["has heading"] = True
            ex["scores"]["rougeL"] += 40
    c = errors.compare(before, after)
    rows = {r["name"]: r for r in c["groups"]}
    heading = rows["style: has heading"]
    assert (heading["count"], heading["count_after"], heading["still"]) == (4, 0, 0)
    assert heading["before"] == 18.75 and heading["after"] == 58.75 and heading["change"] == 40.0
    assert heading["verdict"] == "better" and heading["p"] == 0.0
    stop = rows["did not stop (ran to --max-new-tokens)"]
    assert (stop["count"], stop["count_after"]) == (2, 0)
    assert rows["topic = hiring"]["change"] == pytest.approx(40 * 2 / 6, abs=0.01)  # examples 1 and 9 of 6
    assert c["overall"]["change"] == pytest.approx(160 / 12, abs=0.01)
    other = copy.deepcopy(before)
    other["examples"][3]["input"] = "another transcript"
    with pytest.raises(UserError, match=r"not on the same test examples .*\(example 4 differs"):
        errors.compare(before, other)


def test_the_command_prints_the_groups_and_compares_two_evals(tmp_path):
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"systems": [system(name="base"), system()]}))
    r = cli("errors", str(v1))
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == f"{v1}: tuned on 12 examples, rougeL mean 43.8"
    assert out[3].split() == ["group", "count", "share", "rougeL", "rest", "if", "like", "rest"]
    assert out[4].split() == ["style:", "has", "heading", "4", "33%", "18.8", "56.2", "+12.5"]
    assert "worst of 'bottom quarter of the metric (<= 21.2)':" in r.stdout
    assert "  #1 test.jsonl:1  rougeL 10.0  'output 0'" in r.stdout
    j = json.loads(cli("errors", str(v1), "--json", "--system", "base", "--worst", "1").stdout)
    assert j["system"] == "base" and all(len(g["worst"]) <= 1 for g in j["groups"])
    better = system()
    for ex in better["examples"]:
        ex["scores"]["rougeL"] += 5
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "results.json").write_text(json.dumps(better))
    r = cli("errors", str(v1), str(v2))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(
        f"{v2 / 'results.json'} against {v1} on the same 12 examples: rougeL 43.8 -> 48.8"
    )
    for bad, message in [((str(v1), "--system", "gpt"), "--system gpt: not in this eval (systems: base,"),
                         ((str(tmp_path / "nope.json"), "--registry", str(tmp_path / "r.db")), "no such run"),
                         ((str(tmp_path),), "a folder without results.json")]:  # fmt: skip
        r = cli("errors", *bad)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_registered_eval_and_a_trained_run_stand_for_their_results(tmp_path):
    reg_path = str(tmp_path / "reg.db")
    reg = Registry(reg_path)
    train = reg.add(kind="train", name="v1", path=str(tmp_path / "v1"), model="m", config={}, data=[],
                    parents=[], result={}, metrics=[])  # fmt: skip
    reg.add(kind="eval", name="e-v1", path=str(tmp_path / "e"), model="m", config={}, data=[],
            parents=[("evaluated", str(tmp_path / "v1"))], result=system(), metrics=[])  # fmt: skip
    for ref in ("e-v1", "v1", train):
        r = cli("errors", ref, "--registry", reg_path, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["n"] == 12, (ref, r.stderr)
    lonely = reg.add(kind="train", name="v0", path=None, model="m", config={}, data=[], parents=[], result={},
                     metrics=[])  # fmt: skip
    r = cli("errors", lonely, "--registry", reg_path)
    assert r.returncode == 2 and "a train run with no registered eval" in r.stderr


def test_a_real_eval_keeps_the_metadata_errors_slices_by(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Summarise meeting {i}."},
                          {"role": "assistant", "content": f"Meeting {i}: the budget was agreed."}],
             "topic": ["budget", "hiring"][i % 2], "notes_by": "ann"} for i in range(6)]  # fmt: skip
    test = write_jsonl(tmp_path / "test.jsonl", rows)
    out = tmp_path / "ev"
    r = cli("eval", "--model", str(tiny_model_dir("llama")), "--data", str(test), "--max-new-tokens", "4",
            "--registry", "off", "--out", str(out), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "results.json").read_text())
    metas = [ex["meta"] for ex in result["examples"][:2]]
    assert metas == [{"topic": "budget", "notes_by": "ann"}, {"topic": "hiring", "notes_by": "ann"}]
    page = (out / "report.html").read_text()
    assert "<h2>Where it fails</h2>" in page and "topic = budget" in page
    a = json.loads(cli("errors", str(out), "--json").stdout)
    names = {g["name"]: g["count"] for g in a["groups"]}
    assert names["topic = budget"] == 3 and names["topic = hiring"] == 3
    assert not any(n.startswith("notes_by") for n in names)  # one value for all: not a slice


@pytest.fixture
def two_versions(tmp_path):
    """A registry with v1's and v2's evals on the same test set, and one on another test set."""
    reg_path = str(tmp_path / "reg.db")
    reg = Registry(reg_path)
    better = system()
    for ex in better["examples"]:
        ex["scores"]["rougeL"] += 5
    other = system()
    other["examples"][0]["input"] = "another transcript"
    ids = {}
    for name, result in (("e-v1", system()), ("e-v2", better), ("e-other", other)):
        ids[name] = reg.add(kind="eval", name=name, path=str(tmp_path / name), model="m", config={}, data=[],
                            parents=[], result=result, metrics=[], headline=("rougeL", 1.0))  # fmt: skip
    return reg_path, ids


def test_the_web_app_shows_the_groups_and_picks_two_evals_to_compare(two_versions):
    pytest.importorskip("fastapi", reason="the review app needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from conftest import LOCAL
    from tunesmith.ui.app import create_app

    reg_path, ids = two_versions
    client = TestClient(create_app(reg_path), base_url=LOCAL)
    got = client.get(f"/api/runs/{ids['e-v2']}/errors").json()
    assert got["analysis"]["groups"][0]["name"] == "style: has heading"
    assert [p["name"] for p in got["peers"]] == ["e-v1"]  # not e-other: another test set
    c = client.get(f"/api/runs/{ids['e-v2']}/errors", params={"against": ids["e-v1"]}).json()["comparison"]
    assert c["overall"]["change"] == 5.0 and {r["change"] for r in c["groups"]} == {5.0}
    r = client.get(f"/api/runs/{ids['e-v2']}/errors", params={"against": ids["e-other"]})
    assert r.status_code == 400 and "not on the same test examples" in r.json()["error"]
    assert client.get("/api/runs/nope/errors").status_code == 404


def test_the_failures_and_the_two_eval_page_in_a_browser(two_versions, browser):
    pytest.importorskip("fastapi", reason="the review app needs the 'serve' extra")
    from selenium.webdriver.common.by import By

    from conftest import serving, wait_for
    from tunesmith.ui.app import create_app

    reg_path, ids = two_versions
    with serving(create_app(reg_path)) as port:
        browser.get(f"http://127.0.0.1:{port}/#/run/{ids['e-v2']}")
        wait_for(lambda: "where tuned fails" in browser.find_element(By.ID, "main").text)
        text = browser.find_element(By.ID, "main").text
        assert "style: has heading" in text and "compare with an earlier eval" in text
        browser.get(f"http://127.0.0.1:{port}/#/diff/{ids['e-v1']}/{ids['e-v2']}")
        browser.refresh()
        wait_for(lambda: "e-v2 against e-v1" in browser.find_element(By.TAG_NAME, "h1").text)
        text = browser.find_element(By.ID, "main").text
        assert "rougeL 43.750 → 48.750: +5 [5, 5], p <0.001" in text, text[:500]
        assert "bottom quarter of the metric (<= 21.2) 3 → 2" in text  # 10 and 15 are still under 21.25
        assert "4 → 4" in text and "better" in text  # the heading failures: still 4, each 5 points up
        assert not browser.find_elements(By.CSS_SELECTOR, "p.bad")
