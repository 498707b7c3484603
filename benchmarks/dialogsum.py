"""DialogSum: base, prompted, few-shot, RAG and tuned, on real human-written summaries.

    .venv/bin/python benchmarks/dialogsum.py                     # 450 train / 50 val, 1 epoch, 50 test
    .venv/bin/python benchmarks/dialogsum.py --n-test 250 --epochs 2 --keep /tmp/dialogsum-run

Reads ../shared/data/dialogsum (DialogSum, CC BY-NC-SA 4.0: it is NOT copied into the project;
the converted files live in a temporary folder outside it, removed at the end unless --keep).
train.jsonl: the first --n-train dialogues train, the next --n-val validate. test.jsonl: the
first --n-test dialogues, each with its three human summaries: summary1 is the reference in the
chat example, summary2 and summary3 go in its "references" field, so every text metric is
reported as best-of-3 (headline) and mean-of-3.

Then, through the CLI exactly as a user runs it:
    tunesmith train --data DIR --out DIR/run --epochs E --quiet --json
    tunesmith eval --adapter DIR/run --data DIR/test.jsonl --train DIR/train.jsonl \\
        --systems base,prompted,few-shot:3,rag:3,tuned --system-file DIR/system.txt --out DIR/eval
and prints a markdown table (ROUGE-1/2/L, BLEU, chrF with 95 % bootstrap intervals, the paired
test of each system against base) with the time each step took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "dialogsum"
USER = "Summarize this dialogue.\n\n{dialogue}"
SYSTEM = (
    "You summarize dialogues. Write one to three short sentences in the third person, naming the speakers "
    "#Person1# and #Person2#, that say what happened and what was decided. No preamble, no lists."
)
METRICS = ["rouge1", "rouge2", "rougeL", "bleu", "chrf"]


def chat(dialogue: str, summary: str, **extra) -> dict:
    return {
        "messages": [
            {"role": "user", "content": USER.format(dialogue=dialogue.strip())},
            {"role": "assistant", "content": summary.strip()},
        ],
        **extra,
    }


def convert(work: Path, n_train: int, n_val: int, n_test: int) -> dict:
    train = [json.loads(l) for l in (DATA / "train.jsonl").read_text().splitlines() if l.strip()]
    test = [json.loads(l) for l in (DATA / "test.jsonl").read_text().splitlines() if l.strip()]
    if n_train + n_val > len(train) or n_test > len(test):
        sys.exit(
            f"{DATA} has {len(train)} train and {len(test)} test dialogues; asked for "
            f"{n_train}+{n_val} and {n_test}"
        )

    def write(name, rows):
        (work / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    write("train.jsonl", [chat(r["dialogue"], r["summary"]) for r in train[:n_train]])
    write("val.jsonl", [chat(r["dialogue"], r["summary"]) for r in train[n_train : n_train + n_val]])
    write(
        "test.jsonl",
        [
            chat(r["dialogue"], r["summary1"], references=[r["summary2"], r["summary3"]])
            for r in test[:n_test]
        ],
    )
    (work / "system.txt").write_text(SYSTEM + "\n")
    return {"train": n_train, "val": n_val, "test": n_test}


def run(cmd: list[str], log: Path) -> tuple[float, str]:
    t0 = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("w") as err:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return time.time() - t0, p.stdout


def fmt(m: dict, key: str) -> str:
    v, ci = m.get(key), m.get("ci95", {}).get(key)
    if v is None:
        return "–"
    return f"{v:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{v:.1f}"


def table(results: dict) -> list[str]:
    runs = results["systems"]
    head = (
        "| system | "
        + " | ".join(METRICS)
        + " | mean ROUGE-L of 3 refs | vs base (ROUGE-L) | mean new tokens | generation s |"
    )
    lines = [head, "| --- " * (len(METRICS) + 5) + "|"]
    for r in runs:
        m = r["metrics"]
        cmp = (r.get("comparisons") or {}).get("base", {}).get("rougeL")
        vs = (
            "–"
            if cmp is None
            else f"{cmp['change']:+.1f}" + (f", p={cmp['p']:.3f}" if cmp.get("p") is not None else "")
        )
        new = m.get("mean_new_tokens", float("nan"))
        lines.append(
            f"| {r['system']} | "
            + " | ".join(fmt(m, k) for k in METRICS)
            + f" | {m.get('rougeL_mean_refs', float('nan')):.1f} | {vs} | {new:.0f} | "
            f"{r['generation_s']:.0f} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-train", type=int, default=450)
    ap.add_argument("--n-val", type=int, default=50)
    ap.add_argument("--n-test", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--systems", default="base,prompted,few-shot:3,rag:3,tuned")
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--train-args", default="", help="extra flags for tunesmith train, as one string")
    ap.add_argument(
        "--keep", help="keep the converted data, run and eval output in this folder (outside the project)"
    )
    ap.add_argument("--out", help="also write the table and timings as JSON here")
    a = ap.parse_args()
    if not (DATA / "train.jsonl").is_file():
        sys.exit(f"{DATA}: not found (this benchmark needs ../shared/data/dialogsum beside the project)")
    exe = str(Path(sys.executable).with_name("tunesmith"))
    if a.keep:
        work = Path(a.keep).resolve()
        if ROOT in work.parents or work == ROOT:
            sys.exit("--keep: choose a folder outside the project (DialogSum must not be copied into it)")
        if work.exists() and any(work.iterdir()):
            sys.exit(f"--keep {work}: exists and is not empty")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="dialogsum-"))
    try:
        sizes = convert(work, a.n_train, a.n_val, a.n_test)
        train_cmd = [
            exe,
            "train",
            "--model",
            a.model,
            "--data",
            str(work),
            "--out",
            str(work / "run"),
            "--epochs",
            str(a.epochs),
            "--quiet",
            "--json",
            *a.train_args.split(),
        ]
        print("running:", " ".join(train_cmd), file=sys.stderr, flush=True)
        train_s, out = run(train_cmd, work / "train.log")
        trained = json.loads(out)
        eval_cmd = [
            exe,
            "eval",
            "--adapter",
            str(work / "run"),
            "--data",
            str(work / "test.jsonl"),
            "--train",
            str(work / "train.jsonl"),
            "--systems",
            a.systems,
            "--system-file",
            str(work / "system.txt"),
            "--max-new-tokens",
            str(a.max_new_tokens),
            "--out",
            str(work / "eval"),
            "--quiet",
            "--json",
        ]
        print("running:", " ".join(eval_cmd), file=sys.stderr, flush=True)
        eval_s, _ = run(eval_cmd, work / "eval.log")
        results = json.loads((work / "eval" / "results.json").read_text())
        lines = [
            f"DialogSum ({sizes['train']} train / {sizes['val']} val / {sizes['test']} test, 3 references), "
            f"{a.model}, {a.epochs} epoch(s), greedy, max {a.max_new_tokens} new tokens; "
            f"best of 3 references with 95 % bootstrap intervals",
            "",
            *table(results),
            "",
            f"train: {train_s:.0f} s ({trained.get('steps')} steps, {trained.get('tokens_per_s')} tokens/s, "
            f"val loss {trained.get('val_loss_start') or float('nan'):.3f} → "
            f"{', '.join(f'{v:.3f}' for v in trained.get('val_losses') or [])}); eval of "
            f"{len(results['systems'])} systems: {eval_s:.0f} s",
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"{time.strftime('%Y-%m-%d')}",
        ]
        print("\n".join(lines))
        if a.out:
            Path(a.out).write_text(
                json.dumps(
                    {
                        "sizes": sizes,
                        "train": trained,
                        "train_s": train_s,
                        "eval_s": eval_s,
                        "markdown": "\n".join(lines),
                        "systems": [
                            {k: r[k] for k in ("system", "metrics", "generation_s")}
                            for r in results["systems"]
                        ],
                    },
                    indent=1,
                )
            )
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
