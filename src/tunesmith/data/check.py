"""`tunesmith data check`: one pass, every problem, as file:line: field: message."""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from pathlib import Path

from tunesmith.data.formats import Issue, data_files, normalize, read_records
from tunesmith.errors import DataErrors

FEW_EXAMPLES = 100


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def check(paths: list[str], tokenizer=None, max_length: int | None = None) -> tuple[list[Issue], int]:
    """Returns (issues, number of valid examples)."""
    issues: list[Issue] = []
    seen: dict[str, str] = {}  # whole example -> first location
    prompts: dict[str, tuple[str, str]] = {}  # prompt -> (answer key, first location)
    answer_words: list[tuple[int, str, int]] = []
    valid = 0
    encode = None
    if tokenizer is not None and max_length:
        from tunesmith.chat import encode_chat

        encode = lambda msgs: len(encode_chat(tokenizer, msgs).input_ids)  # noqa: E731
    for path in paths:
        for f in data_files(path):
            for line, obj in read_records(f):
                if isinstance(obj, Issue):
                    issues.append(obj)
                    continue
                msgs, _meta, problems = normalize(obj)
                issues += [Issue(str(f), line, fld, msg, lvl) for lvl, fld, msg in problems]
                if msgs is None:
                    continue
                valid += 1
                here = f"{f}:{line}"
                k = _key(msgs)
                if k in seen:
                    issues.append(Issue(str(f), line, "", f"exact duplicate of {seen[k]}", "warning"))
                    continue
                seen[k] = here
                last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
                pk, ak = _key(msgs[:last]), _key(msgs[last]["content"])
                if pk in prompts and prompts[pk][0] != ak:
                    issues.append(Issue(str(f), line, "", f"conflicting duplicate: same input as {prompts[pk][1]} but a different answer", "warning"))
                prompts.setdefault(pk, (ak, here))
                answer = msgs[last]["content"].strip()
                prompt_text = "\n".join(m["content"] for m in msgs[:last])
                if len(answer) >= 20 and answer in prompt_text:
                    issues.append(Issue(str(f), line, f"messages[{last}]", "answer is copied from the input", "warning"))
                answer_words.append((len(answer.split()), str(f), line))
                if encode is not None:
                    n = encode(msgs)
                    if n > max_length:
                        issues.append(Issue(str(f), line, "", f"{n} tokens, longer than --max-length {max_length}"))
    if 0 < valid < FEW_EXAMPLES:
        issues.append(Issue(", ".join(paths), 0, "", f"only {valid} examples; fine-tuning usually needs {FEW_EXAMPLES}+ to help", "warning"))
    if len(answer_words) >= 20:
        q = statistics.quantiles([w for w, _, _ in answer_words], n=4)
        iqr = q[2] - q[0]
        hi, lo = q[2] + 3 * iqr, q[0] - 3 * iqr
        for w, f, line in answer_words:
            if w > hi or w < lo:
                issues.append(Issue(f, line, "", f"answer length {w} words is an outlier (middle half: {q[0]:.0f}-{q[2]:.0f})", "warning"))
    return issues, valid


def cli_check(args) -> int:
    tokenizer = None
    if args.max_length:
        from tunesmith.modeling import load_tokenizer
        from tunesmith.models import resolve

        tokenizer = load_tokenizer(resolve(args.model or "smollm2-135m", trust_remote_code=args.trust_remote_code), args.trust_remote_code)
    issues, valid = check(args.paths, tokenizer, args.max_length)
    errors = [i for i in issues if i.level == "error"]
    warnings = [i for i in issues if i.level == "warning"]
    if args.json:
        print(json.dumps({"examples": valid, "errors": len(errors), "warnings": len(warnings),
                          "issues": [i.as_dict() for i in issues]}, indent=2))
    else:
        for i in errors:
            print(i)
        for i in warnings:
            print(f"{i} (warning)")
        print(f"{valid} valid examples, {len(errors)} error(s), {len(warnings)} warning(s)", file=sys.stderr if errors else sys.stdout)
    if errors:
        raise DataErrors("")
    return 0
