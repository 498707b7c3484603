"""What each GGUF type costs: file size, llama.cpp's generation speed and `export --verify`'s quality
figures (greedy agreement with the PyTorch model, ROUGE-L and format adherence with their paired tests),
for one model and one test set, one `tunesmith export --verify` per type.

    .venv/bin/python benchmarks/export_quants.py --model smollm2-135m \\
        --data examples/meeting-notes/test.jsonl --style examples/meeting-notes/style.yaml --limit 20

Needs llama-cpp-python (`make llama`). Prints a Markdown table for benchmarks/RESULTS.md; every file is
written to a temporary folder and deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

TYPES = ["f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q5_k_m", "q4_k_m"]


def cpu_flags() -> str:
    try:
        flags = next(
            x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        return platform.processor()
    return ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter")
    ap.add_argument("--data", default="examples/meeting-notes/test.jsonl")
    ap.add_argument("--style", default="examples/meeting-notes/style.yaml")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quant in args.types.split(","):
            out = Path(tmp) / f"m-{quant}.gguf"
            cmd = [sys.executable, "-m", "tunesmith.cli", "export", "--quant", quant, "--out", str(out)]
            cmd += ["--adapter", args.adapter] if args.adapter else ["--model", args.model]
            cmd += ["--verify", args.data, "--verify-limit", str(args.limit), "--registry", "off"]
            cmd += ["--max-new-tokens", str(args.max_new_tokens), "--style", args.style]
            t0 = time.time()
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1
            v = json.loads(out.with_name(out.stem + ".verify.json").read_text())
            n_new = v["gguf"]["mean_new_tokens"] * v["examples"]
            n_ref = v["pytorch"]["mean_new_tokens"] * v["examples"]
            tps = (n_new / max(v["seconds"]["llama_cpp"], 1e-9), n_ref / max(v["seconds"]["pytorch"], 1e-9))
            rows.append((quant, out.stat().st_size, v, tps, time.time() - t0))
            print(f"{quant}: done in {time.time() - t0:.0f}s", file=sys.stderr)
            for f in Path(tmp).iterdir():
                f.unlink()
    print(
        f"model {args.adapter or args.model}; {args.limit} examples of {args.data}; greedy, up to "
        f"{args.max_new_tokens} new tokens; CPU flags: {cpu_flags()}"
    )
    print()
    print(
        "| type | size (MB) | identical outputs | tokens before first difference "
        "| ROUGE-L PyTorch / GGUF (p) | format adherence % PyTorch / GGUF (p) "
        "| new tokens/s llama.cpp / PyTorch | warning |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for quant, size, v, tps, _ in rows:
        a, p = v["agreement"], v["paired"]
        fmt = (
            f"{v['pytorch']['format_adherence']:.0f} / {v['gguf']['format_adherence']:.0f} "
            f"({p['format_adherence']['p']})"
            if "format_adherence" in p
            else "-"
        )
        print(
            f"| {quant} | {size / 1e6:.0f} | {a['identical']}/{a['n']} | {a['prefix_share']:.1f} % | "
            f"{v['pytorch']['rougeL']:.1f} / {v['gguf']['rougeL']:.1f} ({p['rougeL']['p']}) | {fmt} | "
            f"{tps[0]:.0f} / {tps[1]:.0f} | {', '.join(v['significant_drops']) or '-'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
