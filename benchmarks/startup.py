"""How fast the first command answers: `tunesmith --help`, `data check`, and `generate` on the default model
(4 new tokens), each the median of 5 runs with the page cache warm, and with it dropped before each run
(cold: needs root to write /proc/sys/vm/drop_caches; skipped with a line otherwise). Then where a warm
`generate` spends its time: the imports by top-level package (`python -X importtime`) against the wall
time of the whole command.

    .venv/bin/python benchmarks/startup.py            # prints a Markdown table for RESULTS.md
    .venv/bin/python benchmarks/startup.py --runs 3   # quicker

Run it alone on the machine: anything else on the cores moves the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

ROOT = Path(__file__).resolve().parent.parent
TUNESMITH = [sys.executable, "-m", "tunesmith.cli"]
COMMANDS = {
    "tunesmith --help": ["--help"],
    "tunesmith data check (150 examples)": ["data", "check", "examples/meeting-notes/train.jsonl"],
    'tunesmith generate --model smollm2-135m "Hi" --max-new-tokens 4': [
        "generate",
        "--model",
        "smollm2-135m",
        "Hi",
        "--max-new-tokens",
        "4",
    ],
}


def drop_caches() -> bool:
    """Empty the page cache (root only): the next run reads Python, torch and the weights from disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(args: list[str], env: dict | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(
        [*TUNESMITH, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return wall, done.stderr


def imports(args: list[str]) -> tuple[float, dict[str, float]]:
    """-X importtime: seconds of imports in all, and per top-level package (cumulative, first import)."""
    _, err = timed(args, {"PYTHONPROFILEIMPORTTIME": "1"})
    per: dict[str, float] = defaultdict(float)
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) == 1:  # a top-level import (one space of nesting)
            per[m.group(4).split(".")[0]] += int(m.group(2)) / 1e6
    return sum(per.values()), dict(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f} " in flags]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags {have}")
    print("| command | warm median (s) | cold median (s) |")
    print("|---|---|---|")
    for label, cmd in COMMANDS.items():
        timed(cmd)  # the model is fetched and converted once, outside the measurement
        warm = statistics.median(timed(cmd)[0] for _ in range(args.runs))
        cold_runs = []
        for _ in range(args.runs):
            if not drop_caches():
                break
            cold_runs.append(timed(cmd)[0])
        cold = f"{statistics.median(cold_runs):.2f}" if cold_runs else "– (needs root)"
        print(f"| `{label}` | {warm:.2f} | {cold} |")
    gen = COMMANDS['tunesmith generate --model smollm2-135m "Hi" --max-new-tokens 4']
    total, per = imports(gen)
    wall = statistics.median(timed(gen)[0] for _ in range(args.runs))
    top = sorted(per.items(), key=lambda kv: -kv[1])[:8]
    print(f"\ngenerate, warm: {wall:.2f} s in all, of which imports {total:.2f} s (-X importtime):")
    for name, secs in top:
        print(f"  {name:<24} {secs:.2f} s")


if __name__ == "__main__":
    main()
