"""A corpus of bad data files, built here byte for byte (some cannot be committed: a FIFO, UTF-16,
lone surrogates): each must give `data check` an exit code, a report naming the file and line,
and never a traceback or a hang. Files that are fine but unusual (a UTF-8 BOM, a 200 KB CSV cell)
must pass."""

from __future__ import annotations

import json
import os
import random

import pytest

from tunesmith.cli import main


def _chat(*turns, **extra) -> dict:
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": c} for r, c in zip(roles, turns)], **extra}


GOOD = json.dumps(_chat("Write the notes.", "Meeting Summary: fine."))


def _jsonl(*records) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def _parquet(tmp_path, corrupt: bool) -> bytes:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"prompt": f"question {i} " * 20, "completion": f"answer {i} " * 20} for i in range(3000)]
    f = tmp_path / "ok.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f, row_group_size=500, compression="NONE")
    raw = bytearray(f.read_bytes())
    if corrupt:  # overwrite the middle of the data pages, leaving the footer intact
        mid = len(raw) // 2
        raw[mid : mid + 4000] = random.Random(0).randbytes(4000)
    return bytes(raw)


# file name: (content, exit code, a line the report must hold ("" = the file itself, with no line))
CORPUS = {
    "nested.jsonl": (b"[" * 100_000 + b"\n", 1, "nested.jsonl:1: invalid JSON: nested too deeply"),
    "nested.json": (b"[" * 100_000, 1, "nested.json:1: invalid JSON: nested too deeply"),
    "sharegpt_from_list.jsonl": (
        _jsonl({"conversations": [{"from": ["human"], "value": "hi"}, {"from": "gpt", "value": "ok"}]}),
        1,
        "sharegpt_from_list.jsonl:1: conversations[0].from: unknown speaker ['human']",
    ),
    "path_key.jsonl": (_jsonl({**_chat("a", "b"), "_path": 5}), 0, "path_key.jsonl: only 1 example"),
    "surrogate.jsonl": (
        b'{"prompt": "a \\ud800 b", "completion": "x"}\n',
        1,
        "surrogate.jsonl:1: prompt: holds an unpaired surrogate",
    ),
    "surrogate_meta.jsonl": (
        b'{"prompt": "a", "completion": "x", "meeting": "\\udfff"}\n',
        1,
        "surrogate_meta.jsonl:1: meeting: holds an unpaired surrogate",
    ),
    "empty.jsonl": (b"", 1, "empty.jsonl: no examples: the file is empty or holds only blank lines"),
    "blank_lines.jsonl": (b"\n\n   \n\t\n", 1, "blank_lines.jsonl: no examples"),
    "bom.jsonl": (b"\xef\xbb\xbf" + _jsonl(_chat("a", "b")), 0, "bom.jsonl: only 1 example"),
    "utf16.jsonl": (
        "\ufeff".encode("utf-16-le") + GOOD.encode("utf-16-le"),
        1,
        "utf16.jsonl: the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8",
    ),
    "utf16be.json": (("\ufeff[" + GOOD + "]").encode("utf-16-be"), 1, "utf16be.json: the file is UTF-16"),
    "utf32.csv": ("\ufeffprompt,completion\na,b\n".encode("utf-32"), 1, "utf32.csv: the file is UTF-32"),
    "invalid_json.jsonl": (
        _jsonl(GOOD, '{"prompt": "a",'),
        1,
        "invalid_json.jsonl:2: invalid JSON: Expecting property name",
    ),
    "not_utf8.jsonl": (
        b'{"prompt": "caf\xe9", "completion": "b"}\n',
        1,
        "not_utf8.jsonl:1: not UTF-8 (byte 0xe9",
    ),
    "number.jsonl": (b"5\n", 1, "number.jsonl:1: expected a JSON object, got int"),
    "null.jsonl": (
        b"null\n",
        1,
        "number.jsonl:1" if False else "null.jsonl:1: expected a JSON object, got NoneType",
    ),
    "messages_string.jsonl": (
        _jsonl({"messages": "hi"}),
        1,
        "messages_string.jsonl:1: messages: expected a non-empty list",
    ),
    "messages_empty.jsonl": (
        _jsonl({"messages": []}),
        1,
        "messages_empty.jsonl:1: messages: expected a non-empty list",
    ),
    "role_int.jsonl": (
        _jsonl({"messages": [{"role": 5, "content": "a"}, {"role": "assistant", "content": "b"}]}),
        1,
        "role_int.jsonl:1: messages[0].role: unknown role 5",
    ),
    "role_list.jsonl": (
        _jsonl({"messages": [{"role": ["user"], "content": "a"}, {"role": "assistant", "content": "b"}]}),
        1,
        "role_list.jsonl:1: messages[0].role: unknown role ['user']",
    ),
    "content_dict.jsonl": (
        _jsonl({"messages": [{"role": "user", "content": {"t": 1}}, {"role": "assistant", "content": "b"}]}),
        1,
        "content_dict.jsonl:1: messages[0].content: expected a string, got dict",
    ),
    "content_null.jsonl": (
        _jsonl({"prompt": None, "completion": "b"}),
        1,
        "content_null.jsonl:1: prompt: missing",
    ),
    "content_blank.jsonl": (
        _jsonl({"prompt": "  \n ", "completion": "b"}),
        1,
        "content_blank.jsonl:1: prompt: empty",
    ),
    "no_answer.jsonl": (  # a user turn alone is a prompt-only row (GRPO, graders): a warning, not this
        _jsonl({"messages": [{"role": "system", "content": "a"}]}),
        1,
        "no_answer.jsonl:1: messages: no assistant turn",
    ),
    "two_users_no_answer.jsonl": (
        _jsonl({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
        1,
        "two_users_no_answer.jsonl:1: messages: no assistant turn",
    ),
    "assistant_first.jsonl": (
        _jsonl(
            {
                "messages": [
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            }
        ),
        1,
        "assistant_first.jsonl:1: messages: wrong role order: turn 1 is assistant",
    ),
    "system_middle.jsonl": (
        _jsonl(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "c"},
                ]
            }
        ),
        1,
        "system_middle.jsonl:1: messages: a system message may only come first",
    ),
    "completion_int.jsonl": (
        _jsonl({"prompt": "a", "completion": 7}),
        1,
        "completion_int.jsonl:1: completion: expected a string, got int",
    ),
    "huge_number.jsonl": (
        b'{"prompt": "a", "completion": 1e400}\n',
        1,
        "huge_number.jsonl:1: completion: expected a string, got float",
    ),
    "alpaca_input_list.jsonl": (
        _jsonl({"instruction": "a", "input": ["x"], "output": "b"}),
        1,
        "alpaca_input_list.jsonl:1: input: expected a string, got list",
    ),
    "same_pair.jsonl": (
        _jsonl({"prompt": "a", "chosen": "b", "rejected": "b"}),
        1,
        "same_pair.jsonl:1: rejected: same as chosen",
    ),
    "unknown_shape.jsonl": (_jsonl({"foo": 1}), 1, "unknown_shape.jsonl:1: unknown shape"),
    "bad_item.json": (
        b'[{"prompt": "a", "completion": "b"}, 3]',
        1,
        "bad_item.json:2: expected a JSON object, got int",
    ),
    "trailing_comma.json": (
        b'[{"prompt": "a", "completion": "b"},]',
        1,
        "trailing_comma.json:1: invalid JSON",
    ),
    "empty_list.json": (b"[]", 1, "empty_list.json: no examples"),
    "empty.json": (b"", 1, "empty.json:1: invalid JSON"),
    "long_cell.csv": (
        ("prompt,completion\n" + 'a,"' + "word " * 40_000 + '"\n').encode(),
        0,
        "long_cell.csv: only 1 example",
    ),
    "header_only.csv": (b"prompt,completion\n", 1, "header_only.csv: no examples"),
    "empty.csv": (b"", 1, "empty.csv:1: empty CSV (no header row)"),
    "extra_values.csv": (
        b"prompt,completion\na,b,c\n",
        1,
        "extra_values.csv:2: 1 more value(s) than header columns",
    ),
    "messages_not_json.csv": (
        b'messages\n"[{""role"": ""user"""\n',
        1,
        "messages_not_json.csv:2: messages: expected a non-empty list",
    ),
    "not_utf8.csv": (b"prompt,completion\nb\xff,c\n", 1, "not_utf8.csv:2: not UTF-8 (byte 0xff)"),
    "bom.csv": (b"\xef\xbb\xbfprompt,completion\na,b\n", 0, "bom.csv: only 1 example"),
    "nested_cell.csv": (
        b'messages\n"' + b"[" * 100_000 + b'"\n',
        1,
        "nested_cell.csv:2: messages: expected a non-empty list",
    ),
    "text.parquet": (b"this is not parquet", 1, "text.parquet: cannot read Parquet"),
    "corrupt.parquet": (None, 1, "corrupt.parquet:1501: cannot read Parquet from this row on"),
    "fifo.jsonl": (None, 1, "fifo.jsonl: not a regular file (a pipe, socket or device); give a file"),
}


def _write(tmp_path, name: str, content: bytes | None):
    f = tmp_path / name
    if name == "fifo.jsonl":
        os.mkfifo(f)
    elif name == "corrupt.parquet":
        f.write_bytes(_parquet(tmp_path, corrupt=True))
    else:
        f.write_bytes(content)
    return f


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_data_file_is_reported_by_line_never_a_traceback(name, tmp_path, capsys):
    content, code, line = CORPUS[name]
    f = _write(tmp_path, name, content)
    rc = main(["data", "check", str(f)])
    out, err = capsys.readouterr()
    assert rc == code, out + err
    assert f"{tmp_path}/{line}" in out, out + err
    assert out.splitlines()[-1:] != [] or err


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize(
    "name",
    [
        "surrogate.jsonl",
        "nested.jsonl",
        "empty.jsonl",
        "fifo.jsonl",
        "corrupt.parquet",
        "sharegpt_from_list.jsonl",
    ],
)
def test_prepare_and_train_refuse_them_in_one_line(name, tmp_path, capsys):
    content, _, line = CORPUS[name]
    f = _write(tmp_path, name, content)
    rc = main(["data", "prepare", str(f), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    if rc == 0:  # prepare drops invalid records and says why in the card
        card = json.loads((tmp_path / "out" / "card.json").read_text())
        assert (
            any(line.split(": ", 1)[0].endswith(d["where"].rsplit("/", 1)[-1]) for d in card["dropped"])
            or not card["splits"]
        )
    else:
        assert rc in (1, 2) and err.startswith("error: ") and len(err.splitlines()) <= 21, err
    rc = main(["train", "--data", str(f), "--out", str(tmp_path / "run"), "--max-steps", "1"])
    out, err = capsys.readouterr()
    assert rc == 2 and err.splitlines()[-1].startswith("error: --data "), err
    assert not (tmp_path / "run").exists()


def test_a_mix_file_with_a_bad_path_is_one_line(tmp_path, capsys):
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n  - {path: 5, task: a}\n")
    for args in (
        ["data", "prepare", str(mix), "--out", str(tmp_path / "o")],
        ["train", "--data", str(mix), "--out", str(tmp_path / "r")],
    ):
        rc = main(args)
        err = capsys.readouterr().err
        assert (rc, err) == (2, f"error: {mix}: datasets[0].path: expected a file or folder name, got 5\n")
