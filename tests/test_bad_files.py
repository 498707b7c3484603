"""The corpus of bad files in tests/data/bad: each problem reported with its exact message and place."""

import pytest

from conftest import ROOT, cli

BAD = "tests/data/bad"
ONE = "only 1 example; fine-tuning usually needs 100+ to help (warning)"

CASES = {
    "types.jsonl": [
        "types.jsonl:1: messages: expected a non-empty list of messages",
        "types.jsonl:2: messages[0].content: expected a string, got int",
        "types.jsonl:3: messages[0].role: missing",
        # a weight (hosted fine-tuning files) belongs to an assistant message only
        "types.jsonl:4: messages[0].weight: only an assistant message has a weight",
        "types.jsonl:5: messages: a system message may only come first",
        "types.jsonl:6: expected a JSON object, got list",
    ],
    "missing_keys.jsonl": [
        "missing_keys.jsonl:1: completion: missing; the prompt-completion shape needs prompt, completion",
        "missing_keys.jsonl:2: output: missing; the alpaca shape needs instruction, output",
        "missing_keys.jsonl:3: rejected: missing; the preference shape needs prompt, chosen, rejected",
        "missing_keys.jsonl:4: conversations[1].from: unknown speaker 'robot'; expected human, gpt or system",
        "missing_keys.jsonl:5: rejected: same as chosen",
    ],
    "mixed.csv": [  # CSV: the row number, header = row 1
        "mixed.csv:3: completion: empty",
        "mixed.csv:4: 1 more value(s) than header columns",
        f"mixed.csv: {ONE}",
    ],
    "not_utf8.jsonl": ["not_utf8.jsonl:2: not UTF-8 (byte 0xef at column 15)", f"not_utf8.jsonl: {ONE}"],
    "items.json": ["items.json:2: prompt: empty", f"items.json: {ONE}"],  # JSON list: the item number
    "pairs": [  # folders of inputs/ + outputs/: the file
        "pairs/inputs/m2.txt: no matching outputs/m2.txt or .md",
        "pairs/outputs/m3.txt: no matching inputs/m3.txt or .md",
        f"pairs: {ONE}",
    ],
    "leak": [
        "leak/train.jsonl:4: also in tests/data/bad/leak/test.jsonl:1: a training example leaks into "
        "evaluation (warning)",
        "leak/train.jsonl:4: exact duplicate of tests/data/bad/leak/test.jsonl:1 (warning)",
        "leak: only 6 examples; fine-tuning usually needs 100+ to help (warning)",
    ],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_reports_exact_lines(name):
    r = cli("data", "check", f"{BAD}/{name}")
    errors = sum(1 for line in CASES[name] if not line.endswith("(warning)"))
    summary = (r.stderr if errors else r.stdout).splitlines()[-1]
    assert summary.endswith(f" valid examples, {errors} error(s), {len(CASES[name]) - errors} warning(s)")
    assert [x for x in r.stdout.splitlines() if x != summary] == [f"{BAD}/{line}" for line in CASES[name]]
    assert r.returncode == (1 if errors else 0)
    assert "Traceback" not in r.stderr


def test_bad_files_are_never_modified():
    import hashlib

    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ROOT / BAD).rglob("*") if p.is_file()}
    cli("data", "check", BAD)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ROOT / BAD).rglob("*") if p.is_file()}
    assert before == after
