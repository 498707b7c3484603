"""Benchmark: `tunesmith data check` on a large JSONL — lines/s and peak memory.

    python benchmarks/data_check.py --lines 1000000          # ~1 GB file in $TMPDIR
    python benchmarks/data_check.py --lines 100000 --no-tokens

Generates chat examples of ~1 KB each (with some exact duplicates), then runs the real CLI
in a child process and reads its peak RSS from the OS. With tokens (the default), every
example is also rendered through the default model's chat template and tokenized (batched,
fast tokenizer) for the --max-length check.

`--ceiling N` also measures what the tokenizer alone does, in this process: the first N lines'
chats rendered beforehand, then only counted (`chat.text_lengths`, batches of 512, both cores), so
the check's lines/s can be set against the most the tokenizer allows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "meeting team budget design remote battery case prototype marketing research decision action item "
    "project manager interface designer user cost target market speech recognition button screen"
).split()


def make_file(path: Path, lines: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    last = ""
    with open(path, "w") as f:
        for i in range(lines):
            if i and i % 97 == 0:  # a few exact duplicates, as real data has
                f.write(last)
                continue
            user = "Write the meeting notes. Transcript: " + " ".join(rng.choices(WORDS, k=120))
            answer = "Meeting Summary: " + " ".join(rng.choices(WORDS, k=25))
            last = (
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": user},
                            {"role": "assistant", "content": answer},
                        ]
                    }
                )
                + "\n"
            )
            f.write(last)
    return path.stat().st_size


def ceiling(data: Path, lines: int) -> dict:
    """Lines/s of the tokenizer alone on the first `lines` lines: rendering done beforehand, untimed."""
    from tunesmith.models.chat import rendered_texts, text_lengths
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.resolve import resolve

    tok = load_tokenizer(resolve("smollm2-135m", tokenizer_only=True), False, light=True)
    with open(data) as f:
        chats = [json.loads(next(f))["messages"] for _ in range(lines)]
    texts = rendered_texts(tok, chats)
    t = time.perf_counter()
    for i in range(0, len(texts), 512):
        text_lengths(tok, texts[i : i + 512])
    s = time.perf_counter() - t
    return {
        "ceiling_lines": lines,
        "tokenizer_alone_s": round(s, 2),
        "tokenizer_alone_lines_per_s": round(lines / s),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--no-tokens", action="store_true", help="skip the --max-length (tokenization) check")
    ap.add_argument(
        "--max-length",
        type=int,
        default=2048,
        help="2048: examples (~1.2 KB) fit by their byte length, so none needs tokenizing; "
        "256: every example is tokenized",
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    ap.add_argument("--ceiling", type=int, default=0, help="also time the tokenizer alone on this many lines")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tunesmith-bench-"))
    data = tmp / "big.jsonl"
    t = time.time()
    size = make_file(data, a.lines)
    print(f"generated {a.lines:,} lines, {size / 1e6:.0f} MB in {time.time() - t:.0f}s", flush=True)
    cmd = [sys.executable, "-m", "tunesmith.cli", "data", "check", str(data), "--json"]
    if not a.no_tokens:
        cmd += ["--max-length", str(a.max_length), "--model", "smollm2-135m"]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rep = json.loads(r.stdout)
    print(
        json.dumps(
            {
                "lines": a.lines,
                "bytes": size,
                "max_length": None if a.no_tokens else a.max_length,
                "wall_s": round(wall, 1),
                "lines_per_s": round(a.lines / wall),
                "peak_rss_mb": round(peak_mb),
                "examples": rep["examples"],
                "errors": rep["errors"],
                "warnings": rep["warnings"],
            },
            indent=2,
        )
    )
    if a.ceiling:
        print(json.dumps(ceiling(data, a.ceiling), indent=2))
    if not a.keep:
        data.unlink()
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
