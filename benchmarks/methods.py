"""Benchmark: every training method on the shipped example data — tokens/s and validation loss.

    python benchmarks/methods.py [--max-steps 10] [--model smollm2-135m]

Runs `tunesmith train` once per method (same data, batch, seed) with a step budget and
prints one JSON line per method plus a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

ROOT = Path(__file__).resolve().parent.parent
LR = {"lora": 1e-3, "dora": 1e-3, "full": 5e-5, "freeze": 1e-4, "prompt-tuning": 3e-1, "prefix-tuning": 1e-2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(LR))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in a.methods.split(","):
            cmd = [
                sys.executable,
                "-m",
                "tunesmith.cli",
                "train",
                "--model",
                a.model,
                "--data",
                str(ROOT / "examples" / "meeting-notes"),
                "--out",
                f"{tmp}/{method}",
                "--method",
                method,
                "--max-steps",
                str(a.max_steps),
                "--batch-size",
                "4",
                "--lr",
                str(LR[method]),
                "--json",
            ]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                rows.append({"method": method, "error": r.stderr.strip().splitlines()[-1]})
            else:
                out = json.loads(r.stdout)
                rows.append(
                    {
                        "method": method,
                        "lr": LR[method],
                        "steps": out["steps"],
                        "tokens_per_s": out["tokens_per_s"],
                        "val_loss_start": round(out["val_loss_start"], 4),
                        "val_loss": round(out["val_losses"][-1], 4),
                        "train_loss": round(out["train_loss"], 4),
                        "wall_s": out["wall_s"],
                    }
                )
            print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| method | lr | steps | tokens/s | train loss | val loss before → after |\n| --- | --- | --- | "
        "--- | --- | --- |"
    )
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | - | - | - | - | {r['error']} |")
        else:
            print(
                f"| {r['method']} | {r['lr']} | {r['steps']} | {r['tokens_per_s']} | {r['train_loss']} | "
                f"{r['val_loss_start']} → {r['val_loss']} |"
            )


if __name__ == "__main__":
    main()
