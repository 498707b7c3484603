"""`tunesmith data check`: one pass, every problem, as file:line: field: message.

Streams: memory grows by a few dozen bytes per example (digests and lengths), never with
the text itself, so a million-line file checks in bounded memory.

With --max-length, the examples that might be too long are counted by the tokenizer in batches, and a
batch is counted in a background thread while the next one is read and checked: the Rust tokenizer lets
go of the GIL, so the reading (JSON, digests, the template) overlaps the counting instead of waiting
for it (issue 35, part 4; measured in benchmarks/RESULTS.md). The issues come out in the same order as
counting in line would give: a batch's are put back where its last example was read.
"""

from __future__ import annotations

import statistics
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tunesmith.data.formats import Issue, ReadOptions, iter_examples, messages_digest
from tunesmith.data.labels import LabelReport
from tunesmith.models.chat import last_assistant, render, rendered_texts, text_lengths

FEW_EXAMPLES = 100
EVAL_NAMES = ("val", "valid", "validation", "dev", "test", "eval")
TOKEN_BATCH = 512


class Checker:
    """Memory per example: one dict entry (int -> int) plus 12 bytes in arrays."""

    def __init__(self, tokenizer=None, max_length: int | None = None):
        self.issues: list[Issue] = []
        self.valid = 0
        self.files: list[str] = []
        self.roles: list[str | None] = []  # per file: train, eval or None (from the file name)
        # prompt digest -> answer digest (32 bits) << 32 | example number; the first example with that prompt
        self.prompts: dict[int, int] = {}
        self.ex_file = array("I")  # example number -> file index
        self.ex_line = array("I")  # example number -> line
        self.words = array("I")  # example number -> answer length in words
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pending: list = []  # examples waiting for batched tokenization
        # the batch being counted in the background: (its token counts, its examples, where its issues go)
        self.counting: tuple[Future, list, int] | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.overheads: dict[tuple, int] = {}  # role sequence -> template bytes around the contents
        self.labels = LabelReport()  # classes and targets of labelled examples (data/labels.py)
        self.summary: list[str] = []

    def loc(self, n: int) -> str:
        return f"{self.files[self.ex_file[n]]}:{self.ex_line[n]}"

    def add_file_results(self, path: str, opts: ReadOptions) -> None:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="count-tokens") as self.pool:
            self.read_examples(path, opts)
            self.flush_lengths()
            self.collect_lengths()
        self.pool = None

    def read_examples(self, path: str, opts: ReadOptions) -> None:
        for ex, issues in iter_examples(path, opts):
            if issues:
                self.issues += issues
            if ex is None:
                continue
            self.valid += 1
            if ex.path not in self.files[-1:]:
                self.files.append(ex.path)
                stem = Path(ex.path).stem.lower()
                self.roles.append("eval" if stem in EVAL_NAMES else "train" if stem == "train" else None)
            n = len(self.ex_file)
            self.ex_file.append(len(self.files) - 1)
            self.ex_line.append(ex.line)
            msgs = ex.messages
            if ex.label is not None:
                self.labels.add(ex.label, f"{ex.path}:{ex.line}", self.roles[-1])
            last = len(msgs) - 1 if msgs[-1]["role"] == "assistant" else last_assistant(msgs)
            answer = msgs[last]["content"] if last < len(msgs) else ""  # a prompt-only row has none
            pk = messages_digest(msgs[:last])
            ak = (
                messages_digest(msgs[last:], ex.rejected if ex.label is None else repr(ex.label)) & 0xFFFFFFFF
            )
            self.words.append(len(answer.split()))
            prev = self.prompts.get(pk)
            if prev is None:
                self.prompts[pk] = ak << 32 | n
            else:
                first = prev & 0xFFFFFFFF
                self.leak(first, n)
                if prev >> 32 == ak:
                    self.issues.append(
                        Issue(ex.path, ex.line, "", f"exact duplicate of {self.loc(first)}", "warning")
                    )
                    continue
                if ex.rejected is None:
                    self.issues.append(
                        Issue(
                            ex.path,
                            ex.line,
                            "",
                            f"conflicting duplicate: same input as {self.loc(first)} but a different answer",
                            "warning",
                        )
                    )
            answer = answer.strip()
            if len(answer) >= 20 and any(answer in m["content"] for m in msgs[:last]):
                self.issues.append(
                    Issue(ex.path, ex.line, f"messages[{last}]", "answer is copied from the input", "warning")
                )
            tooled = ex.tools is not None or any(m.get("tool_calls") for m in msgs)  # no cheap bound: count
            if self.tokenizer is not None and self.max_length and (tooled or self.may_be_too_long(msgs)):
                self.pending.append(ex)
                if len(self.pending) >= TOKEN_BATCH:
                    self.flush_lengths()

    def may_be_too_long(self, msgs: list[dict]) -> bool:
        """Cheap exact pre-check: a token covers at least one byte of the rendered text, so a
        chat whose rendered UTF-8 length (+1 for a BOS) fits in --max-length cannot exceed it.
        The template's own bytes are measured once per sequence of roles."""
        roles = tuple(m["role"] for m in msgs)
        over = self.overheads.get(roles)
        if over is None:
            probe = [{"role": r, "content": "x"} for r in roles]
            over = self.overheads[roles] = len(render(self.tokenizer, probe).encode()) - len(roles) + 1
        return over + sum(len(m["content"].encode()) for m in msgs) > self.max_length

    def flush_lengths(self) -> None:
        """Hand the pending examples to the counting thread, once the batch before them is collected."""
        self.collect_lengths()
        if not self.pending:
            return
        texts = rendered_texts(
            self.tokenizer, [e.messages for e in self.pending], [e.tools for e in self.pending]
        )
        counts = self.pool.submit(text_lengths, self.tokenizer, texts)
        self.counting, self.pending = (counts, self.pending, len(self.issues)), []

    def collect_lengths(self) -> None:
        """The counted batch's too-long examples, put where counting in line would have put them."""
        if self.counting is None:
            return
        counts, batch, mark = self.counting
        self.counting = None
        self.issues[mark:mark] = [
            Issue(ex.path, ex.line, "", f"{n} tokens, longer than --max-length {self.max_length}")
            for ex, n in zip(batch, counts.result())
            if n > self.max_length
        ]

    def finish_labels(self) -> None:
        found, self.summary = self.labels.findings()
        for where, message, level in found:
            path, _, line = where.rpartition(":")
            self.issues.append(Issue(path or where, int(line) if line.isdigit() else 0, "", message, level))

    def finish(self, paths: list[str]) -> None:
        self.finish_labels()
        if 0 < self.valid < FEW_EXAMPLES:
            self.issues.append(
                Issue(
                    ", ".join(paths),
                    0,
                    "",
                    f"only {self.valid} example{'s' if self.valid != 1 else ''}; fine-tuning usually needs "
                    f"{FEW_EXAMPLES}+ to help",
                    "warning",
                )
            )
        if len(self.words) >= 20 and not self.labels.tasks:  # a labelled example has no answer to measure
            q = statistics.quantiles(self.words, n=4)
            iqr = q[2] - q[0]
            hi, lo = q[2] + 3 * iqr, q[0] - 3 * iqr
            for n, w in enumerate(self.words):
                if w > hi or w < lo:
                    self.issues.append(
                        Issue(
                            self.files[self.ex_file[n]],
                            self.ex_line[n],
                            "",
                            f"answer length {w} words is an outlier (middle half: {q[0]:.0f}-{q[2]:.0f})",
                            "warning",
                        )
                    )

    def leak(self, first: int, n: int) -> None:
        """A training example whose input also appears in a val/test file (by file name)."""
        r1, r2 = self.roles[self.ex_file[first]], self.roles[self.ex_file[n]]
        if {r1, r2} == {"train", "eval"}:
            train, other = (n, first) if r2 == "train" else (first, n)
            self.issues.append(
                Issue(
                    self.files[self.ex_file[train]],
                    self.ex_line[train],
                    "",
                    f"also in {self.loc(other)}: a training example leaks into evaluation",
                    "warning",
                )
            )


def check(
    paths: list[str], tokenizer=None, max_length: int | None = None, opts: ReadOptions | None = None
) -> tuple[list[Issue], int]:
    """Returns (issues, number of valid examples)."""
    c = checked(paths, tokenizer, max_length, opts)
    return c.issues, c.valid


def checked(
    paths: list[str], tokenizer=None, max_length: int | None = None, opts: ReadOptions | None = None
) -> Checker:
    """The finished Checker: its issues, valid count and summary lines (the classes or the target)."""
    c = Checker(tokenizer, max_length)
    for p in paths:
        c.add_file_results(p, opts or ReadOptions())
    c.finish(paths)
    return c
