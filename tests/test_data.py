"""`tunesmith data check`: every problem, as file:line: field: message, with exact output."""

import json

from conftest import chat, cli, toy_examples, write_jsonl
from tunesmith.data.formats import normalize


def test_check_reports_every_problem_with_location(tmp_path):
    good = chat("Summarize: the team met.", "Meeting Summary: The team met.")
    f = write_jsonl(
        tmp_path / "d.jsonl",
        [
            good,  # 1 ok
            '{"messages": [ broken',  # 2 invalid JSON
            {"messages": [{"role": "system", "content": "hi"}]},  # 3 no assistant
            {
                "messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
            },  # 4 order
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},  # 5 empty
            {"messages": [{"role": "bot", "content": "a"}]},  # 6 unknown role
            {"text": "hello"},  # 7 unknown shape
            good,  # 8 exact duplicate
            chat("Summarize: the team met.", "Meeting Summary: Something else."),  # 9 conflicting
            {"prompt": "p", "completion": 3},  # 10 wrong type
        ],
    )
    with open(f, "ab") as fh:
        fh.write(b'{"prompt": "caf\xe9", "completion": "x"}\n')  # 11 not UTF-8
    r = cli("data", "check", str(f))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{f}:2: invalid JSON: Expecting value (column 16)",
        f"{f}:3: messages: no assistant turn: nothing to learn or score",
        f"{f}:4: messages: wrong role order: turn 1 is assistant, expected user (user and assistant "
        "alternate, user first)",
        f"{f}:5: messages[0].content: empty",
        f"{f}:6: messages[0].role: unknown role 'bot'; expected system (or developer), user or assistant",
        f"{f}:7: unknown shape: expected keys messages, prompt+completion, instruction+output, "
        "conversations, prompt+chosen+rejected, question+answer or text+label/labels/target; found text",
        f"{f}:10: completion: expected a string, got int",
        f"{f}:11: not UTF-8 (byte 0xe9 at column 16)",
        f"{f}:8: exact duplicate of {f}:1 (warning)",
        f"{f}:9: conflicting duplicate: same input as {f}:1 but a different answer (warning)",
        f"{f}: only 3 examples; fine-tuning usually needs 100+ to help (warning)",
    ]
    assert r.stderr.strip().endswith("3 valid examples, 8 error(s), 3 warning(s)")
    assert "Traceback" not in r.stderr


def test_check_clean_file_exits_zero_and_json(tmp_path):
    f = write_jsonl(tmp_path / "ok.jsonl", toy_examples(120))
    r = cli("data", "check", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "120 valid examples, 0 error(s), 0 warning(s)"
    r = cli("data", "check", "--json", str(f))
    rep = json.loads(r.stdout)
    assert (rep["examples"], rep["errors"], rep["warnings"]) == (120, 0, 0)


def test_check_max_length_in_model_tokens(tmp_path, tiny_model_dir):
    f = write_jsonl(tmp_path / "d.jsonl", [chat("short", "ok"), chat("long " * 300, "ok")])
    r = cli("data", "check", str(f), "--max-length", "64", "--model", str(tiny_model_dir("llama")))
    assert r.returncode == 1
    line = r.stdout.splitlines()[0]
    assert line.startswith(f"{f}:2: ") and line.endswith("tokens, longer than --max-length 64")


def test_missing_path_is_one_clear_line(tmp_path):
    r = cli("data", "check", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 2
    assert r.stderr == f"error: {tmp_path / 'nope.jsonl'}: no such file or directory\n"


def test_other_shapes_normalize_to_chat():
    assert normalize({"prompt": "p", "completion": "c"})[0].messages == [
        {"role": "user", "content": "p"},
        {"role": "assistant", "content": "c"},
    ]
    assert normalize({"instruction": "Do it", "input": "text", "output": "done"})[0].messages == [
        {"role": "user", "content": "Do it\n\ntext"},
        {"role": "assistant", "content": "done"},
    ]
    assert normalize({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})[
        0
    ].messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    ex, _ = normalize({**chat("q", "a"), "meeting": "Bed004"})
    assert ex.meta == {"meeting": "Bed004"} and len(ex.messages) == 2
    pref, _ = normalize({"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert pref.kind == "preference" and pref.rejected == "bad" and pref.messages[-1]["content"] == "good"


def test_check_counts_tokens_in_the_background_in_line_order(tmp_path, tiny_model_dir, monkeypatch):
    """--max-length counts a batch in a thread while the next is read: the same issues in the same order
    as counting each batch in line (the code before), whatever the batch size."""
    import threading

    from tunesmith.data import check as check_mod
    from tunesmith.data.formats import Issue
    from tunesmith.models.chat import rendered_lengths
    from tunesmith.models.loading import load_tokenizer

    class InLine(check_mod.Checker):
        def flush_lengths(self):
            lengths = rendered_lengths(self.tokenizer, [e.messages for e in self.pending])
            for ex, n in zip(self.pending, lengths):
                if n > self.max_length:
                    self.issues.append(
                        Issue(ex.path, ex.line, "", f"{n} tokens, longer than --max-length 64")
                    )
            self.pending = []

    tok = load_tokenizer(tiny_model_dir("llama"), False, light=True)
    rows = [chat("long " * 80 * (i % 3 == 0) + f"q{i % 7}", "ok") for i in range(40)]  # duplicates too
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    threads = []
    real = check_mod.text_lengths
    monkeypatch.setattr(
        check_mod, "text_lengths", lambda *a: threads.append(threading.current_thread()) or real(*a)
    )
    for batch in (2, 3, 512):
        monkeypatch.setattr(check_mod, "TOKEN_BATCH", batch)
        got = check_mod.Checker(tok, 64)
        got.add_file_results(str(f), check_mod.ReadOptions())
        want = InLine(tok, 64)
        want.add_file_results(str(f), check_mod.ReadOptions())
        assert [i.as_dict() for i in got.issues] == [i.as_dict() for i in want.issues], batch
        assert (
            sum("longer than --max-length" in i.message for i in got.issues) == 7
        )  # 14 long, 7 of them duplicates
        assert any("duplicate" in i.message for i in got.issues)
    assert threads and all(t is not threading.main_thread() for t in threads)
