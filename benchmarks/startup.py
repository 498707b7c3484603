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
    """-X importtime: seconds of imports in all, and each package's own share (the self time of its modules,
    so torch's share is not counted again under transformers, which imports it)."""
    _, err = timed(args, {"PYTHONPROFILEIMPORTTIME": "1"})
    per: dict[str, float] = defaultdict(float)
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| *(\S+)", line)
        if m:
            per[m.group(3).split(".")[0]] += int(m.group(1)) / 1e6
    return sum(per.values()), dict(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f} " in flags]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags {have}")
    warm: dict[str, list[float]] = {}
    for label, cmd in COMMANDS.items():  # warm first: dropping the cache disturbs the runs after it a while
        timed(cmd)  # the model is fetched and converted once, outside the measurement
        warm[label] = sorted(timed(cmd)[0] for _ in range(args.runs))
    gen = COMMANDS['tunesmith generate --model smollm2-135m "Hi" --max-new-tokens 4']
    total, per = imports(gen)
    cold: dict[str, list[float]] = {}
    for label, cmd in COMMANDS.items():
        runs = []
        for _ in range(args.runs):
            if not drop_caches():
                break
            runs.append(timed(cmd)[0])
        cold[label] = sorted(runs)
    print("| command | warm: median (min–max) s | cold: median (min–max) s |")
    print("|---|---|---|")
    for label in COMMANDS:
        w, c = warm[label], cold[label]
        cell = f"{statistics.median(c):.2f} ({c[0]:.2f}–{c[-1]:.2f})" if c else "– (needs root)"
        print(f"| `{label}` | {statistics.median(w):.2f} ({w[0]:.2f}–{w[-1]:.2f}) | {cell} |")
    print(f"\ngenerate, warm: imports {total:.2f} s in all (-X importtime), each package's own share:")
    for name, secs in sorted(per.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {name:<24} {secs:.2f} s")


if __name__ == "__main__":
    main()
