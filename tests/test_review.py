"""Review (issue 20): queues made from registered evals, judgements stored one by one, their stats
(win rates with Wilson intervals, Cohen's kappa) and their export as training data (SFT corrections,
DPO pairs) that `data check` passes and `train` takes, with test examples held back and duplicates
left out. On a tiny model, in process."""

from __future__ import annotations

import json

import pytest

from conftest import LOCAL, cli, toy_examples, write_jsonl
from tunesmith.errors import UserError
from tunesmith.registry.db import Registry
from tunesmith.review import export, stats, store
from tunesmith.review.store import Judgement
from tunesmith.scoring.stats import cohen_kappa, wilson


def test_wilson_and_kappa_match_published_values():
    assert wilson(0, 10) == (0.0, 0.2775)  # Wilson (1927) interval at k = 0: not the normal's [0, 0]
    assert wilson(10, 10) == (0.7225, 1.0)
    lo, hi = wilson(7, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.397, 0.892)
    # Cohen's kappa, the worked example on Wikipedia: 50 items, 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no
    first = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(first, second) == 0.4
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement 1: undefined
    assert cohen_kappa(["a", "b"], ["b", "a"]) == -1.0


def judge(reg: Registry, item: int, who: str, q: dict, choice: str, left_first: bool = True) -> int:
    left, right = (q["a"], q["b"]) if left_first else (q["b"], q["a"])
    return store.record(
        reg, Judgement(item=item, reviewer=who, kind="ab", left=left, right=right, choice=choice)
    )


def test_judgements_become_stats_and_training_data(evaluated, tmp_path):
    root, reg_path, test = evaluated
    # two trained runs stand for their newest evals: the outputs are named by the run they came from
    r = cli("review", "--registry", reg_path, "add", "v1", "v2", "--name", "round1")
    assert r.returncode == 0, r.stderr
    A, B = "v1/tuned", "v2/tuned"
    assert r.stdout.startswith(f"queue round1: 4 items, outputs {A}, {B}; A/B compares {A} and {B}")
    reg = Registry(reg_path)
    q = store.queue(reg, "round1")
    its = store.items(reg, "round1")
    assert [i["example"] for i in its] == [0, 1, 2, 3]
    source = [json.loads(x) for x in test.read_text().splitlines()]
    assert its[0]["prompt"] == source[0]["messages"][:-1]  # the example's own prompt, from the test file
    assert its[0]["reference"] == source[0]["messages"][-1]["content"]
    assert set(its[0]["outputs"]) == {A, B} and "rougeL" in its[0]["outputs"][B]["scores"]
    # the item both reviewers prefer B on: one whose two outputs differ (the tiny model may repeat itself)
    distinct = [
        i
        for i in its
        if len({i["outputs"][A]["output"].strip(), i["outputs"][B]["output"].strip()} - {""}) == 2
    ]
    assert distinct, [i["outputs"] for i in its]
    order = [distinct[0]] + [i for i in its if i is not distinct[0]]
    ids = [i["id"] for i in order]
    # ann: B, B, tie (shown in both orders); bob: B, A on the first two; ann rates and corrects the fourth
    judge(reg, ids[0], "ann", q, B)
    judge(reg, ids[1], "ann", q, B, left_first=False)
    judge(reg, ids[2], "ann", q, "tie")
    judge(reg, ids[0], "bob", q, B)
    judge(reg, ids[1], "bob", q, A)
    store.record(
        reg, Judgement(item=ids[3], reviewer="ann", kind="rating", label=B, rating=2, tags=["tense"])
    )
    fixed = "Meeting Summary: The team agreed the plan.\n\nPoints discussed:\n- the plan"
    store.record(reg, Judgement(item=ids[3], reviewer="ann", kind="correction", label=B, text=fixed))
    rows = store.judgements(reg, "round1")
    assert [(j["reviewer"], j["kind"], j["left"]) for j in rows][:2] == [("ann", "ab", A), ("ann", "ab", B)]

    s = stats.stats(reg)
    assert s["reviewers"] == {
        "ann": {"ab": 3, "rating": 1, "correction": 1, "accept": 0, "reject": 0},
        "bob": {"ab": 2, "rating": 0, "correction": 0, "accept": 0, "reject": 0},
    }
    ab = s["queues"][0]["ab"]
    assert (ab["a_wins"], ab["b_wins"], ab["ties"]) == (1, 3, 1)
    assert ab["a_win_rate"] == 0.25 and ab["interval"] == list(wilson(1, 4))
    [agree] = s["queues"][0]["agreement"]
    assert agree["reviewers"] == ["ann", "bob"] and (agree["items"], agree["agreed"]) == (2, 1)
    assert agree["kappa"] == cohen_kappa([B, B], [B, A]) == 0.0
    out = cli("review", "--registry", reg_path, "stats").stdout
    assert (
        f"  A/B   {A} preferred in 1 of 4 decisive votes: 25% [95 % interval 5%, 70%]; {B} 3, ties 1" in out
    )
    assert "  agreement ann / bob: 1 of 2 items, Cohen's kappa 0.00" in out
    assert f"  rated {B}: mean 2.00 of 5 (1 ratings)" in out

    sft, dpo = tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl"
    r = cli("review", "--registry", reg_path, "export", "--sft", str(sft), "--dpo", str(dpo))
    assert r.returncode == 0, r.stderr
    assert f"sft: wrote 1 to {sft}; left out: 0 held back (in a test set), 0 already in the data" in r.stdout
    # B twice on the first item; one vote each on the second (no choice); a tie; the correction as a pair
    said = (
        f"dpo: wrote 2 to {dpo}; left out: 0 held back (in a test set), 0 already in the data, 1 split votes"
    )
    assert said in r.stdout
    [ex] = [json.loads(x) for x in sft.read_text().splitlines()]
    assert ex == {"messages": [*order[3]["prompt"], {"role": "assistant", "content": fixed}]}
    pairs = [json.loads(x) for x in dpo.read_text().splitlines()]
    outputs = order[0]["outputs"]
    assert pairs[0] == {"prompt": order[0]["prompt"][0]["content"], "chosen": outputs[B]["output"],
                        "rejected": outputs[A]["output"]}  # fmt: skip
    assert pairs[1]["chosen"] == fixed and pairs[1]["rejected"] == order[3]["outputs"][B]["output"]
    # both files pass `data check` and feed training: DPO on the pairs continues v2
    for f in (sft, dpo):
        checked = cli("data", "check", str(f))
        assert checked.returncode == 0 and "0 error(s)" in checked.stdout, checked.stdout + checked.stderr
    args = ["train", "--method", "dpo", "--data", str(dpo), "--from-adapter", "v2",
            "--out", str(tmp_path / "v3"), "--registry", reg_path, "--epochs", "1", "--quiet"]  # fmt: skip
    r = cli(*args)  # two pairs: too few to trust, and the refusal says what to do instead
    assert r.returncode == 2 and "preference pairs; on fewer than 37" in r.stderr and "--replay" in r.stderr
    r = cli(*args, "--allow-few-pairs")
    assert r.returncode == 0, r.stderr

    # what is already in the training data is left out; a test set is held back, and said so
    again = cli(
        "review", "--registry", reg_path, "export", "--sft", str(tmp_path / "s2.jsonl"), "--train", str(sft)
    )
    assert (
        again.returncode == 2
        and "nothing to write" in again.stderr
        and "1 already in the data" in again.stderr
    )
    held = cli(
        "review",
        "--registry",
        reg_path,
        "export",
        "--dpo",
        str(tmp_path / "d2.jsonl"),
        "--holdout",
        str(test),
    )
    assert held.returncode == 2 and "2 held back (in a test set)" in held.stderr
    assert not (tmp_path / "d2.jsonl").exists()
    into_input = cli("review", "--registry", reg_path, "export", "--sft", str(test), "--holdout", str(test))
    assert into_input.returncode == 2 and "is one of the inputs" in into_input.stderr
    # an empty answer makes no pair (the tiny base model says nothing): left out and counted
    assert cli("review", "--registry", reg_path, "add", "both", "--name", "base-vs-tuned").returncode == 0
    q2 = store.queue(reg, "base-vs-tuned")
    empty = [i for i in store.items(reg, "base-vs-tuned") if not i["outputs"]["base"]["output"].strip()]
    if empty:
        judge(reg, empty[0]["id"], "ann", q2, "tuned")
        r = cli("review", "--registry", reg_path, "export", "--dpo", str(tmp_path / "d3.jsonl"), "--queue",
                "base-vs-tuned")  # fmt: skip
        assert r.returncode == 2 and "1 an empty answer" in r.stderr


def test_an_eval_that_ran_with_a_gate_makes_its_test_set_held_back(evaluated, tmp_path):
    root, reg_path, test = evaluated
    assert cli("review", "--registry", reg_path, "add", "both", "--name", "gated").returncode == 0
    reg = Registry(reg_path)
    q = store.queue(reg, "gated")
    [first, *_] = store.items(reg, "gated")
    judge(reg, first["id"], "ann", q, "tuned")
    assert export.holdout_prompts(reg, [], None)[1] == []
    r = cli("eval", "--adapter", "v1", "--data", str(test), "--max-new-tokens", "6", "--registry", reg_path,
            "--gate", "v1", "--quiet")  # fmt: skip
    assert r.returncode in (0, 3), r.stderr
    held, files = export.holdout_prompts(reg, [], None)
    assert files == [test.resolve()] and first["digest"] in held
    r = cli(
        "review", "--registry", reg_path, "export", "--dpo", str(tmp_path / "d.jsonl"), "--queue", "gated"
    )
    assert r.returncode == 2 and "1 held back (in a test set)" in r.stderr


def test_bad_judgements_and_queues_are_one_line_errors(evaluated):
    root, reg_path, test = evaluated
    reg = Registry(reg_path)
    if "bad" not in [x["name"] for x in store.queues(reg)]:
        store.add_queue(reg, ["both"], "bad")
    q = store.queue(reg, "bad")
    it = store.items(reg, "bad")[0]["id"]
    cases = [
        (Judgement(it, "", "ab", "base", "tuned", "tuned"), "reviewer: give a name"),
        (
            Judgement(it, "ann", "ab", "base", "other", "base"),
            "left/right: the queue compares base and tuned",
        ),
        (Judgement(it, "ann", "ab", "base", "tuned", "both"), "choice 'both': base, tuned or tie"),
        (Judgement(it, "ann", "rating", label="tuned", rating=6), "rating 6: a whole number from 1 to 5"),
        (Judgement(it, "ann", "rating", label="gpt", rating=3), "label 'gpt': one of base, tuned"),
        (Judgement(it, "ann", "correction", label="tuned", text="  "), "text: the corrected answer"),
        (Judgement(it, "ann", "vote"), "kind 'vote': one of ab, rating, correction"),
        (Judgement(99999, "ann", "ab"), "review item 99999: no such item"),
    ]
    for j, said in cases:
        with pytest.raises(UserError, match=said.replace("(", r"\(")):
            store.record(reg, j)
    assert store.judgements(reg, "bad") == [] and q["a"] == "base"
    r = cli("review", "--registry", reg_path, "add", "both", "--name", "bad")
    assert r.returncode == 2 and "a queue named 'bad' exists" in r.stderr
    r = cli("review", "--registry", reg_path, "add", "both", "--name", "x", "--pair", "base,gpt")
    assert r.returncode == 2 and "'gpt' is not one of the outputs (base, tuned)" in r.stderr
    r = cli("review", "--registry", reg_path, "stats", "--queue", "nope")
    assert r.returncode == 2 and "review queue 'nope': no such queue" in r.stderr
    r = cli("review", "--registry", reg_path, "export")
    assert r.returncode == 2 and "--sft FILE and/or --dpo FILE" in r.stderr
    r = cli("review", "--registry", reg_path, "rm", "bad")
    assert r.returncode == 0 and r.stdout == "removed queue bad and its 0 judgements\n"


def test_a_queue_needs_one_test_set(evaluated, tmp_path):
    root, reg_path, test = evaluated
    other = write_jsonl(tmp_path / "other.jsonl", toy_examples(3, seed=9))
    r = cli("eval", "--adapter", "v2", "--data", str(other), "--max-new-tokens", "6", "--registry", reg_path,
            "--out", str(tmp_path / "e-other"), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = cli("review", "--registry", reg_path, "add", "e-v1", "e-other", "--name", "mixed")
    assert r.returncode == 2 and "is not on the same test examples as" in r.stderr
    r = cli("review", "--registry", reg_path, "add", "e-v1", "e-v2", "--name", "versions")
    assert r.returncode == 0, r.stderr
    one = cli("review", "--registry", reg_path, "add", "e-v1", "--name", "single")
    assert (
        one.returncode == 0
        and "A/B compares tuned and tuned (one output: ratings and corrections only)" in one.stdout
    )
    reg = Registry(reg_path)
    it = store.items(reg, "single")[0]["id"]
    with pytest.raises(UserError, match="the queue compares tuned and tuned"):
        store.record(reg, Judgement(it, "ann", "ab", "tuned", "tuned", "tuned"))
    assert store.record(reg, Judgement(it, "ann", "rating", label="tuned", rating=3)) > 0
    listing = cli("review", "--registry", reg_path, "list").stdout
    assert [x.split()[:4] for x in listing.splitlines() if x.startswith("versions ")] == [
        ["versions", "v1/tuned", "vs", "v2/tuned"]
    ]


# ---------------------------------------------------------------- serve --capture, feedback, purge


def test_serve_capture_feedback_review_and_purge(tiny_model_dir, tmp_path):
    pytest.importorskip("fastapi", reason="serve needs the 'serve' extra")
    pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the 'test' extra)")
    from fastapi.testclient import TestClient

    from conftest import make_adapter
    from tunesmith.registry.captures import Captures, captured
    from tunesmith.serve import app as A
    from tunesmith.serve.server import load_engine

    model = tiny_model_dir("llama")
    adapter = make_adapter(model, tmp_path / "notes", 1)
    eng, base = load_engine(str(model), {"notes": adapter}, trust_remote_code=False, max_batch=2, max_queue=4)
    reg_path = str(tmp_path / "reg.db")
    keep = Captures(reg_path, {base: (None, None), "notes": (str(adapter), None)})
    key = {"Authorization": "Bearer sk-x"}
    settings = A.Settings(keys=["sk-x"], max_tokens=8, capture=keep)
    try:
        with TestClient(A.create_app(eng, base, settings), base_url=LOCAL) as client:
            msgs = [{"role": "user", "content": "Write the meeting notes. Focus: budget"}]
            whole = client.post(
                "/v1/chat/completions", headers=key, json={"model": "notes", "messages": msgs}
            )
            assert whole.status_code == 200, whole.text
            streamed = client.post("/v1/completions", headers=key, json={"model": base, "prompt": "Notes:",
                                                                          "stream": True})  # fmt: skip
            assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
            rid = whole.json()["id"]
            fb = {"id": rid, "rating": "down", "correction": "Budget: agreed."}
            said = client.post("/v1/feedback", headers=key, json=fb)
            assert said.status_code == 200 and said.json() == {
                "id": rid,
                "object": "feedback",
                "recorded": True,
            }
            cases = [
                (
                    {"id": "chatcmpl-nope", "rating": "up"},
                    key,
                    404,
                    "no captured answer has the id 'chatcmpl-nope'",
                ),
                ({"id": rid, "rating": "meh"}, key, 400, "'rating'"),
                ({"id": rid}, key, 400, "give a rating ('up' or 'down'), a correction, or both"),
                ({"id": rid, "rating": "up"}, {}, 401, None),
            ]
            for body, headers, status, message in cases:
                r = client.post("/v1/feedback", headers=headers, json=body)
                assert r.status_code == status, (body, r.text)
                assert message is None or message in r.json()["error"]["message"], r.json()
        off = TestClient(A.create_app(eng, base, A.Settings(keys=[])), base_url=LOCAL)
        r = off.post("/v1/feedback", json={"id": rid, "rating": "up"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "capture_off"
        # a registry that breaks while serving: answers go on, feedback says it was not stored
        broken = tmp_path / "broken.db"
        bad = Captures(str(broken), {base: (None, None)})
        for f in tmp_path.glob("broken.db*"):
            f.unlink()
        broken.write_bytes(b"not a database" * 100)
        shaky = TestClient(
            A.create_app(eng, base, A.Settings(keys=[], max_tokens=4, capture=bad)), base_url=LOCAL
        )
        answered = shaky.post("/v1/chat/completions", json={"model": base, "messages": msgs})
        assert answered.status_code == 200, answered.text
        r = shaky.post("/v1/feedback", json={"id": answered.json()["id"], "rating": "up"})
        assert r.status_code == 503 and "could not store the feedback" in r.json()["error"]["message"]
    finally:
        eng.close()
    reg = Registry(reg_path)
    rows = captured(reg)
    assert [(c["model"], c["adapter"]) for c in rows] == [("notes", str(adapter)), (base, None)]
    assert rows[0]["request"]["messages"] == msgs
    assert rows[0]["response"]["text"] == whole.json()["choices"][0]["message"]["content"]
    assert rows[1]["response"]["text"] and rows[1]["response"]["finish"] in ("stop", "length")
    assert (rows[0]["rating"], rows[0]["correction"]) == ("down", "Budget: agreed.")
    # into a review queue: one answer per item, the user's correction shown as the reference
    r = cli("review", "--registry", reg_path, "add", "--captures", "--name", "from-app")
    assert r.returncode == 0, r.stderr
    its = store.items(reg, "from-app")
    assert [i["prompt"] for i in its] == [msgs, [{"role": "user", "content": "Notes:"}]]
    assert its[0]["reference"] == "Budget: agreed." and its[0]["outputs"]["answer"]["feedback"] == "down"
    # purge: the captures, their feedback and the review items made of them
    r = cli("review", "--registry", reg_path, "purge", "--before", "2999-01-01")
    assert (
        r.stdout
        == "deleted 2 captured requests and answers (with their feedback), 2 review items made of them\n"
    )
    assert captured(reg) == [] and store.items(reg, "from-app") == []
    assert reg.db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 0
    r = cli("review", "--registry", reg_path, "purge", "--before", "last week")
    assert r.returncode == 2 and "--before 'last week': a date as YYYY-MM-DD" in r.stderr
