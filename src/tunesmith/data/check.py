"""`tunesmith data check`: one pass, every problem, as file:line: field: message.

Streams: memory grows by a few dozen bytes per example (digests and lengths), never with
the text itself, so a million-line file checks in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from array import array
from pathlib import Path

from tunesmith.data.formats import Issue, ReadOptions, iter_examples
from tunesmith.errors import DataErrors

FEW_EXAMPLES = 100
EVAL_NAMES = ("val", "valid", "validation", "dev", "test", "eval")
TOKEN_BATCH = 512


def _digest(obj) -> bytes:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode(), digest_size=12).digest()


class Checker:
    def __init__(self, tokenizer=None, max_length: int | None = None):
        self.issues: list[Issue] = []
        self.valid = 0
        self.files: list[str] = []
        self.seen: dict[bytes, tuple[int, int]] = {}  # whole example -> (file index, line)
        self.prompts: dict[bytes, tuple[bytes, int, int]] = {}  # prompt -> (answer digest, file index, line)
        self.words = array("I")
        self.word_loc = array("Q")  # file index << 32 | line, for outliers
        self.roles: list[str | None] = []  # per file: train, eval or None (from the file name)
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pending: list = []  # examples waiting for batched tokenization

    def loc(self, fi: int, line: int) -> str:
        return f"{self.files[fi]}:{line}"

    def add_file_results(self, path: str, opts: ReadOptions) -> None:
        for ex, issues in iter_examples(path, opts):
            self.issues += issues
            if ex is None:
                continue
            self.valid += 1
            if ex.path not in self.files[-1:]:
                self.files.append(ex.path)
                stem = Path(ex.path).stem.lower()
                self.roles.append("eval" if stem in EVAL_NAMES else "train" if stem == "train" else None)
            fi = len(self.files) - 1
            last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
            pk = _digest(ex.messages[:last])
            self.leak(pk, fi, ex)
            k = _digest([ex.messages, ex.rejected])
            if k in self.seen:
                self.issues.append(Issue(ex.path, ex.line, "", f"exact duplicate of {self.loc(*self.seen[k])}", "warning"))
                continue
            self.seen[k] = (fi, ex.line)
            ak = _digest(ex.messages[last]["content"])
            if pk in self.prompts and self.prompts[pk][0] != ak and ex.rejected is None:
                prev = self.prompts[pk]
                self.issues.append(Issue(ex.path, ex.line, "",
                                         f"conflicting duplicate: same input as {self.loc(prev[1], prev[2])} but a different answer", "warning"))
            self.prompts.setdefault(pk, (ak, fi, ex.line))
            answer = ex.messages[last]["content"].strip()
            prompt_text = "\n".join(m["content"] for m in ex.messages[:last])
            if len(answer) >= 20 and answer in prompt_text:
                self.issues.append(Issue(ex.path, ex.line, f"messages[{last}]", "answer is copied from the input", "warning"))
            self.words.append(len(answer.split()))
            self.word_loc.append(fi << 32 | ex.line)
            if self.tokenizer is not None and self.max_length:
                self.pending.append(ex)
                if len(self.pending) >= TOKEN_BATCH:
                    self.flush_lengths()
        self.flush_lengths()

    def flush_lengths(self) -> None:
        if not self.pending:
            return
        from tunesmith.chat import rendered_lengths

        for ex, n in zip(self.pending, rendered_lengths(self.tokenizer, [e.messages for e in self.pending])):
            if n > self.max_length:
                self.issues.append(Issue(ex.path, ex.line, "", f"{n} tokens, longer than --max-length {self.max_length}"))
        self.pending = []

    def finish(self, paths: list[str]) -> None:
        if 0 < self.valid < FEW_EXAMPLES:
            self.issues.append(Issue(", ".join(paths), 0, "", f"only {self.valid} example{'s' if self.valid != 1 else ''}; fine-tuning usually needs {FEW_EXAMPLES}+ to help", "warning"))
        if len(self.words) >= 20:
            q = statistics.quantiles(self.words, n=4)
            iqr = q[2] - q[0]
            hi, lo = q[2] + 3 * iqr, q[0] - 3 * iqr
            for w, packed in zip(self.words, self.word_loc):
                if w > hi or w < lo:
                    f, line = self.files[packed >> 32], packed & 0xFFFFFFFF
                    self.issues.append(Issue(f, line, "", f"answer length {w} words is an outlier (middle half: {q[0]:.0f}-{q[2]:.0f})", "warning"))

    def leak(self, pk: bytes, fi: int, ex) -> None:
        """A training example whose input also appears in a val/test file (by file name)."""
        prev = self.prompts.get(pk)
        if prev is None or {self.roles[fi], self.roles[prev[1]]} != {"train", "eval"}:
            return
        if self.roles[fi] == "train":
            self.issues.append(Issue(ex.path, ex.line, "", f"also in {self.loc(prev[1], prev[2])}: a training example leaks into evaluation", "warning"))
        else:
            self.issues.append(Issue(self.files[prev[1]], prev[2], "", f"also in {self.loc(fi, ex.line)}: a training example leaks into evaluation", "warning"))


def check(paths: list[str], tokenizer=None, max_length: int | None = None, opts: ReadOptions | None = None) -> tuple[list[Issue], int]:
    """Returns (issues, number of valid examples)."""
    c = Checker(tokenizer, max_length)
    for p in paths:
        c.add_file_results(p, opts or ReadOptions())
    c.finish(paths)
    return c.issues, c.valid


def cli_check(args) -> int:
    tokenizer = None
    if args.max_length:
        from tunesmith.modeling import load_tokenizer
        from tunesmith.models import resolve

        tokenizer = load_tokenizer(resolve(args.model or "smollm2-135m", trust_remote_code=args.trust_remote_code), args.trust_remote_code)
    opts = ReadOptions(format=args.format, template=args.template or ReadOptions.template, system=args.system)
    issues, valid = check(args.paths, tokenizer, args.max_length, opts)
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
