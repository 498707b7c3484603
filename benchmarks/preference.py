"""DPO and GRPO on the shipped example data, through the CLI, with before/after numbers.

    # pairs: reference notes (chosen) vs base-model notes (rejected)
    .venv/bin/python benchmarks/preference.py dpo
    .venv/bin/python benchmarks/preference.py grpo    # from a short SFT run, GRPO with the format grader

dpo:  the base model writes notes for --n-train training and --n-val validation prompts
      (greedy, --max-new-tokens); each becomes a pair {prompt, chosen: the reference notes,
      rejected: the base model's notes}. Then
          tunesmith train --method dpo --data DIR --out DIR/dpo --epochs E --json
      and the held-out preference accuracy before and after is read from its result.
grpo: tunesmith train (LoRA SFT, --sft-steps steps: short on purpose, so the house style is
      not yet perfect), tunesmith eval of that adapter (format adherence + ROUGE-L on the test
      set), then
          tunesmith train --method grpo --from-adapter SFT --graders format --style style.yaml
      and tunesmith eval of the GRPO adapter with --baseline: the paired test says whether
      format adherence rose and whether ROUGE-L moved beyond its confidence interval.
Everything runs in a temporary folder (kept with --keep DIR).
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
DATA = ROOT / "examples" / "meeting-notes"


def rows(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def cli(exe: str, *args: str, log: Path) -> tuple[float, str]:
    t0 = time.time()
    with log.open("w") as err:
        p = subprocess.run(
            [exe, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): tunesmith {' '.join(args)}\n{log.read_text()[-3000:]}")
    return time.time() - t0, p.stdout


def run_dpo(a, work: Path, exe: str) -> list[str]:
    from tunesmith.models.loading import generate, load

    train, val = rows(DATA / "train.jsonl")[: a.n_train], rows(DATA / "val.jsonl")[: a.n_val]
    loaded = load(a.model, quiet=True)
    t0 = time.time()
    convs = [r["messages"][:-1] for r in train + val]
    outs = generate(loaded.model, loaded.tokenizer, convs, max_new_tokens=a.max_new_tokens, batch_size=16)
    gen_s = time.time() - t0
    del loaded

    def pair(r, o):
        user = [m for m in r["messages"] if m["role"] == "user"][-1]["content"]
        return {"prompt": user, "chosen": r["messages"][-1]["content"], "rejected": o.text or "(no answer)"}

    d = work / "prefs"
    d.mkdir()
    for name, rs, os_ in (("train", train, outs[: len(train)]), ("val", val, outs[len(train) :])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(pair(r, o)) + "\n" for r, o in zip(rs, os_)))
    train_s, out = cli(
        exe,
        "train",
        "--method",
        "dpo",
        "--model",
        a.model,
        "--data",
        str(d),
        "--out",
        str(work / "dpo"),
        "--epochs",
        str(a.epochs),
        "--dpo-beta",
        str(a.beta),
        "--lr",
        str(a.lr),
        "--json",
        log=work / "dpo.log",
    )
    r = json.loads(out)
    s, e = r["val_start"], r["val"][-1]
    return [
        f"DPO on the example data: {len(train)} train / {len(val)} held-out pairs (chosen: the reference "
        "notes; rejected: "
        f"{a.model}'s own greedy notes, max {a.max_new_tokens} new tokens), {a.epochs} epoch(s), beta "
        f"{a.beta}, lr {a.lr}",
        "",
        "| held-out pairs | before | after |",
        "| --- | --- | --- |",
        f"| DPO loss | {s['val_loss']:.4f} | {e['val_loss']:.4f} |",
        f"| reward accuracy (chosen's implicit reward > rejected's) | {s['val_accuracy']:.0%} (policy = "
        f"reference: ties) | {e['val_accuracy']:.0%} |",
        f"| mean reward margin | {s['val_margin']:+.3f} | {e['val_margin']:+.3f} |",
        f"| chosen has the higher average log-prob per token | {s['logp_accuracy']:.0%} | "
        f"{e['logp_accuracy']:.0%} |",
        "",
        f"rejected answers generated in {gen_s:.0f} s; dpo: {r['steps']} steps, {r['tokens_per_s']:.0f} "
        f"tokens/s, {train_s:.0f} s "
        f"wall (process, incl. the reference pass and validation)",
    ]


def run_grpo(a, work: Path, exe: str) -> list[str]:
    style = str(DATA / "style.yaml")
    test = ["--data", str(DATA / "test.jsonl"), "--style", style, "--max-new-tokens", str(a.max_new_tokens)]
    if a.n_test:
        test += ["--limit", str(a.n_test)]
    sft_s, _ = cli(
        exe,
        "train",
        "--model",
        a.model,
        "--data",
        str(DATA),
        "--out",
        str(work / "sft"),
        "--max-steps",
        str(a.sft_steps),
        "--batch-size",
        "4",
        "--json",
        log=work / "sft.log",
    )
    e1_s, _ = cli(
        exe,
        "eval",
        "--adapter",
        str(work / "sft"),
        *test,
        "--out",
        str(work / "eval-sft"),
        "--quiet",
        "--json",
        log=work / "eval-sft.log",
    )
    grpo_s, out = cli(
        exe,
        "train",
        "--method",
        "grpo",
        "--from-adapter",
        str(work / "sft"),
        "--data",
        str(DATA),
        "--out",
        str(work / "grpo"),
        "--graders",
        "format",
        "--style",
        style,
        "--max-steps",
        str(a.grpo_steps),
        "--batch-size",
        str(a.grpo_batch),
        "--grpo-group",
        str(a.group),
        "--grpo-max-new-tokens",
        str(a.max_new_tokens),
        "--lr",
        str(a.lr),
        "--eval-limit",
        "10",
        "--json",
        log=work / "grpo.log",
    )
    g = json.loads(out)
    e2_s, _ = cli(
        exe,
        "eval",
        "--adapter",
        str(work / "grpo"),
        *test,
        "--baseline",
        str(work / "eval-sft" / "results.json"),
        "--out",
        str(work / "eval-grpo"),
        "--quiet",
        "--json",
        log=work / "eval-grpo.log",
    )
    before = json.loads((work / "eval-sft" / "results.json").read_text())
    after = json.loads((work / "eval-grpo" / "results.json").read_text())
    cmp = after.get("comparison") or {}

    def line(key, name):
        b, x = before["metrics"].get(key), after["metrics"].get(key)
        ci_b, ci_x = before["metrics"].get("ci95", {}).get(key), after["metrics"].get("ci95", {}).get(key)
        c = cmp.get(key) or {}
        p = f"{c['change']:+.1f}, p={c['p']:.3f}" if c.get("p") is not None else "–"
        f = lambda v, ci: f"{v:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
        return f"| {name} | {f(b, ci_b)} | {f(x, ci_x)} | {p} |"

    steps = [
        json.loads(l) for l in (work / "grpo" / "metrics.jsonl").read_text().splitlines() if '"reward"' in l
    ]
    return [
        f"GRPO on the example data: SFT {a.sft_steps} steps (batch 4), then GRPO from that adapter with the "
        "format grader "
        f"(examples/meeting-notes/style.yaml), {g['steps']} steps of {a.grpo_batch} prompts x {a.group} "
        "samples, "
        f"max {a.max_new_tokens} new tokens, lr {a.lr}; test set {after['n']} examples, greedy",
        "",
        "| test set | SFT | SFT + GRPO | change (paired) |",
        "| --- | --- | --- | --- |",
        line("format_adherence", "format adherence, %"),
        line("rougeL", "ROUGE-L"),
        line("rouge1", "ROUGE-1"),
        "",
        "sampled reward (format share) per step: "
        + ", ".join(f"{s['reward']:.2f}" for s in steps)
        + f"; held-out (10 val prompts, greedy) {g['val_start'].get('val_reward', float('nan')):.2f} -> "
        + ", ".join(f"{v['val_reward']:.2f}" for v in g["val"]),
        f"times: sft {sft_s:.0f} s, eval {e1_s:.0f} s, grpo {grpo_s:.0f} s ({g['tokens_per_s']:.0f} trained "
        "tokens/s), "
        f"eval {e2_s:.0f} s",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", choices=["dpo", "grpo"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--n-val", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=0, help="grpo: only the first N test examples (0 = all 30)")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=None, help="default: 5e-4 (dpo), 2e-4 (grpo)")
    ap.add_argument("--sft-steps", type=int, default=6)
    ap.add_argument("--grpo-steps", type=int, default=8)
    ap.add_argument("--grpo-batch", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--keep", help="keep the work folder here")
    a = ap.parse_args()
    a.lr = a.lr or (5e-4 if a.which == "dpo" else 2e-4)
    exe = str(Path(sys.executable).with_name("tunesmith"))
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix=f"pref-{a.which}-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        lines = run_dpo(a, work, exe) if a.which == "dpo" else run_grpo(a, work, exe)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    lines.append(
        f"total {time.time() - t0:.0f} s; `benchmarks/preference.py {' '.join(sys.argv[1:])}`; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
