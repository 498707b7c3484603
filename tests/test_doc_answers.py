"""Answering from documents (issue 39, part 4): the embedding and hybrid retrievers of `docs index --embed`,
and `generate`, `chat` and `serve` with --docs, whose answers carry their passages and citations."""

from __future__ import annotations

import json

import pytest

from conftest import LOCAL, SERVE_KEY, cli, run_cli
from test_classify import tiny_encoder
from test_documents import corpus
from tunesmith.corpus.cite import check_citations, retrieve, sources_line


def test_citations_are_read_back_and_a_mark_pointing_nowhere_is_named():
    c = check_citations("Budgets rose [2]. The team met [1, 3] and again [2][7].", 3)
    assert c == {"cited": [2, 1, 3], "unknown": [7]}
    given = [{"n": n, "file": f"d{n}.txt", "where": f"words {n}-9"} for n in (1, 2, 3)]
    assert (
        sources_line(given, "It rose [2] [9].")
        == "sources: [2] d2.txt (words 2-9); cites [9], which it was not given"
    )
    assert sources_line(given, "no marks") == "sources: none cited"


@pytest.fixture
def embedded(tmp_path):
    """An index with vectors from a tiny random BERT: identical text -> identical vector, so a passage's own
    words find it first by cosine."""
    enc = tiny_encoder(tmp_path / "enc")
    docs = corpus(tmp_path / "docs", 6)
    r = cli("docs", "index", str(docs), "--out", str(tmp_path / "idx"), "--embed", str(enc), "--quiet")
    assert r.returncode == 0, r.stderr
    return tmp_path, docs, enc, r


def test_an_embedded_index_searches_by_vectors_and_hybrid_and_reuses_them(embedded):
    from tunesmith.corpus.index import Index

    tmp_path, docs, enc, r = embedded
    idx = Index(str(tmp_path / "idx"))
    n = len(idx.passages)
    assert f"{n} passages embedded" in r.stdout and idx.retriever == "hybrid"
    target = idx.passages[4]
    top = idx.search(target["text"], 3, "embed")
    assert top[0][1] is target and top[0][0] == pytest.approx(1.0, abs=1e-4) and top[1][0] < top[0][0]
    hybrid = idx.search("which budget code has the heron project?", 3)
    assert hybrid[0][1]["file"] == "planted.pdf"  # BM25's clear first stays first after fusion
    (docs / "doc01.txt").write_text("The osprey committee meets on Fridays.")
    r = cli("docs", "index", str(docs), "--out", str(tmp_path / "idx"), "--embed", str(enc), "--quiet")
    assert r.returncode == 0 and "1 passages embedded" in r.stdout  # only the changed file's passage
    r = cli("docs", "index", str(docs), "--out", str(tmp_path / "bm"), "--quiet")
    r = cli("docs", "search", str(tmp_path / "bm"), "budget", "--retriever", "embed")
    assert r.returncode == 2 and "has no vectors; build it with `docs index --embed`" in r.stderr


def test_generate_answers_from_documents_with_its_passages_and_citations(tmp_path, tiny_model_dir):
    docs = corpus(tmp_path / "docs", 4)
    assert cli("docs", "index", str(docs), "--out", str(tmp_path / "idx"), "--quiet").returncode == 0
    m = str(tiny_model_dir("llama"))
    r = cli("generate", "--model", m, "--docs", str(tmp_path / "idx"), "--passages", "2", "--max-new-tokens",
            "5", "--json", "which budget code has the heron project?")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [p["n"] for p in out["passages"]] == [1, 2] and out["passages"][0]["file"] == "planted.pdf"
    assert out["citations"] == check_citations(out["output"], 2)
    r = cli("generate", "--model", m, "--docs", str(tmp_path / "idx"), "--max-new-tokens", "3", "budget")
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("sources: ")


def test_chat_gives_the_passages_to_the_model_but_keeps_the_question_as_asked(tmp_path, tiny_model_dir):
    from tunesmith.corpus.index import Index

    docs = corpus(tmp_path / "docs", 3)
    assert cli("docs", "index", str(docs), "--out", str(tmp_path / "idx"), "--quiet").returncode == 0
    history = [{"role": "user", "content": "heron budget code?"}]
    asked, given = retrieve(Index(str(tmp_path / "idx")), history, 2)
    assert history == [{"role": "user", "content": "heron budget code?"}]  # not changed in place
    assert (
        asked[-1]["content"].startswith("Passages from the documents")
        and "[1] planted.pdf" in asked[-1]["content"]
    )
    assert asked[-1]["content"].endswith("heron budget code?") and len(given) == 2
    r = run_cli("chat", "--model", str(tiny_model_dir("llama")), "--docs", str(tmp_path / "idx"),
                "--max-new-tokens", "3", input="heron budget code?\n/exit\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith("sources: ")


def test_serve_answers_from_documents_whole_and_streamed(tmp_path, tiny_model_dir):
    pytest.importorskip("fastapi", reason="serve needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from tunesmith.corpus.index import Index
    from tunesmith.serve import app as A
    from tunesmith.serve.server import load_engine

    docs = corpus(tmp_path / "docs", 3)
    assert cli("docs", "index", str(docs), "--out", str(tmp_path / "idx"), "--quiet").returncode == 0
    eng, base = load_engine(
        str(tiny_model_dir("llama")), {}, trust_remote_code=False, max_batch=2, max_queue=4
    )
    try:
        settings = A.Settings(keys=[SERVE_KEY], max_tokens=20, max_prompt_tokens=2000)
        c = TestClient(
            A.create_app(eng, base, settings, None, Index(str(tmp_path / "idx")), 2), base_url=LOCAL
        )
        ask = {
            "model": base,
            "messages": [{"role": "user", "content": "heron budget code?"}],
            "max_tokens": 4,
        }
        auth = {"Authorization": "Bearer " + SERVE_KEY}
        body = c.post("/v1/chat/completions", headers=auth, json=ask).json()
        assert [p["file"] for p in body["passages"]][0] == "planted.pdf" and len(body["passages"]) == 2
        assert body["citations"] == check_citations(body["choices"][0]["message"]["content"], 2)
        assert body["usage"]["prompt_tokens"] > 100  # the passages were in the prompt
        events = c.post("/v1/chat/completions", headers=auth, json={**ask, "stream": True}).text.split("\n\n")
        last = json.loads(next(e for e in reversed(events) if e.startswith("data: {"))[6:])
        assert last["choices"][0]["finish_reason"] and len(last["passages"]) == 2 and "citations" in last
    finally:
        eng.close()
    r = cli("serve", "--model", str(tiny_model_dir("llama")), "--docs", str(tmp_path / "nope"), "--no-auth")
    assert r.returncode == 2 and "not a document index" in r.stderr
