"""Baseline systems for `tunesmith eval --systems`: parsing, few-shot and RAG prompt building, BM25."""

from __future__ import annotations

import math

import pytest

from tunesmith.errors import UserError
from tunesmith.eval.systems import BM25, System, build_prompts, parse_systems


def conv(user, answer=None, system=None):
    m = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return m + ([{"role": "assistant", "content": answer}] if answer else [])


def test_parse_systems():
    assert parse_systems("base,prompted,few-shot:3,rag:2+prompted,tuned") == [
        System("base", "base"),
        System("prompted", "prompted", 0, True),
        System("few-shot:3", "few-shot", 3),
        System("rag:2+prompted", "rag", 2, True),
        System("tuned", "tuned"),
    ]
    assert parse_systems("base+docs:3,tuned+docs:2,prompted+docs:1+prompted") == [
        System("base+docs:3", "base", 0, False, 3),
        System("tuned+docs:2", "tuned", 0, False, 2),
        System("prompted+docs:1+prompted", "prompted", 0, True, 1),
    ]
    for bad, msg in [
        ("rag", "--systems rag: give how many examples, e.g. rag:3"),
        (
            "zero",
            "--systems zero: unknown system 'zero'; choose from base, prompted, few-shot:K, rag:K, tuned",
        ),
        (
            "base,base",
            "--systems base,base: give each system once, e.g. base,prompted,few-shot:3,rag:3,tuned",
        ),
        ("tuned:2", "--systems tuned:2: tuned takes no ':K'"),
        (
            "rag:2+x",
            "--systems rag:2+x: '+prompted' and '+docs:K' can be added to a system (e.g. "
            "rag:3+prompted, tuned+docs:3)",
        ),
        (
            "tuned+docs:0",
            "--systems tuned+docs:0: '+prompted' and '+docs:K' can be added to a system (e.g. "
            "rag:3+prompted, tuned+docs:3)",
        ),
    ]:
        with pytest.raises(UserError) as e:
            parse_systems(bad)
        assert str(e.value) == msg


def test_bm25_matches_hand_computed_scores():
    docs = ["budget budget remote", "remote case design", "battery"]
    bm = BM25(docs)
    # idf(budget): n=3, df=1 -> ln(1 + 2.5/1.5); doc 0 has f=2, len 3; lengths 3, 3, 1 -> avg 7/3
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    tf_part = 2 * 2.5 / (2 + 1.5 * (1 - 0.75 + 0.75 * 3 / (7 / 3)))
    assert bm.scores("budget")[0] == pytest.approx(idf * tf_part)
    assert bm.scores("budget")[1:] == [0.0, 0.0]
    assert bm.top("design of the remote case", 2) == [1, 0]


def test_few_shot_and_rag_prompts():
    train = [
        conv("budget talk about money", "Notes: budget"),
        conv("battery choice kinetic", "Notes: battery"),
        conv("case design rubber", "Notes: case", system="old system"),
    ]
    prompts = [conv("what about the battery", system="data system"), conv("rubber case please")]
    rag, used, _ = build_prompts(System("rag:1", "rag", 1), prompts, train=train)
    assert used == [[1], [2]]
    assert rag[0] == [
        {"role": "system", "content": "data system"},
        {"role": "user", "content": "battery choice kinetic"},
        {"role": "assistant", "content": "Notes: battery"},
        {"role": "user", "content": "what about the battery"},
    ]
    assert rag[1] == [
        {"role": "user", "content": "case design rubber"},
        {"role": "assistant", "content": "Notes: case"},
        {"role": "user", "content": "rubber case please"},
    ]  # the shot's own system prompt is not carried
    few, used, _ = build_prompts(System("few-shot:2", "few-shot", 2), prompts, train=train)
    assert used[0] == used[1] and len(used[0]) == 2  # the same examples for every prompt
    prompted, _, _ = build_prompts(
        System("prompted", "prompted", 0, True), prompts, system_prompt="You write notes."
    )
    assert prompted[0] == [
        {"role": "system", "content": "You write notes."},
        {"role": "user", "content": "what about the battery"},
    ]
    with pytest.raises(UserError, match="needs your system prompt"):
        build_prompts(System("prompted", "prompted", 0, True), prompts)
    with pytest.raises(UserError, match="asks for 5 examples; the training file has 3"):
        build_prompts(System("rag:5", "rag", 5), prompts, train=train)


def test_document_passages_go_before_the_last_user_turn_with_their_places(tmp_path):
    """+docs:K: the K passages of the index most like the prompt, numbered with file and place, before the
    last user turn; which ones each prompt got comes back for the results; no index is one line."""
    pytest.importorskip("pypdf", reason="docs needs the 'documents' extra")
    from tunesmith.corpus.index import Index as DocIndex
    from tunesmith.corpus.index import build

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "herons.md").write_text("The heron survey counted forty birds at the north lake in May.")
    (docs / "budget.txt").write_text("The budget for the remote control is twelve euros per unit.")
    build(str(docs), str(tmp_path / "idx"))
    prompts = [conv("How many birds did the heron survey count?", system="data system")]
    convs, _, cited = build_prompts(
        System("base+docs:1", "base", docs=1), prompts, docs=DocIndex(str(tmp_path / "idx"))
    )
    assert cited == [
        [{"file": "herons.md", "where": "bytes 0-62, words 1-12", "score": cited[0][0]["score"]}]
    ]
    assert convs[0][0] == {"role": "system", "content": "data system"}
    assert convs[0][1]["content"] == (
        "Passages from the documents (cite one as [n] where you use it):\n"
        "[1] herons.md (bytes 0-62, words 1-12): The heron survey counted forty birds at the north lake "
        "in May.\n"
        "\nHow many birds did the heron survey count?"
    )
    with pytest.raises(UserError, match="needs a document index: --docs INDEX"):
        build_prompts(System("base+docs:1", "base", docs=1), prompts)
