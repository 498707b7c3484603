"""The loop, measured: does version 2 beat version 1, and which way of getting v2 does it? (issue 32)

On the shipped example data, through the CLI as a user runs it:

  v1      LoRA on the first --v1 training examples (the rest of train.jsonl is never shown to v1).
  pool    the next --pool training examples: v1 writes notes for them, and a *stand-in reviewer*
          (this script, standing in for a person in `tunesmith ui`) corrects the worst --k of them
          by ROUGE-L with the pool's own reference notes. The test set is never looked at.
  routes  each builds a v2, and `tunesmith eval --gate runs/v1` compares it with v1 on the untouched
          30 test prompts (paired bootstrap):
    corrections  SFT on the k corrections from v1, with replay of v1's data (--replay-ratio, default 3)
    dpo-N        DPO (with its SFT term, the default) from v1 on the N worst pairs {chosen: the
                 corrected notes, rejected: v1's notes}, N in --dpo-pairs (--allow-few-pairs)
    teacher      `tunesmith data generate --teacher runs/v1 --best-of B --style` (or this script's
                 --teacher URL) on --unlabeled transcripts whose notes are never used; the drafts
                 that pass every style rule and end by themselves are accepted (a stand-in for the
                 person), then SFT from v1 with replay
    more-data    the learning curve's route: LoRA from the base model on v1's examples plus the pool's,
                 with their reference notes

    .venv/bin/python benchmarks/loop.py --out /tmp/loop         # ~1 h on 2 cores (bf16 CPU)
    .venv/bin/python benchmarks/loop.py --out /tmp/loop --routes dpo --dpo-pairs 5,10,20

Prints a Markdown table (for benchmarks/RESULTS.md) and writes OUT/loop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from tunesmith.train.machine import flags_text

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "meeting-notes"
STYLE = str(DATA / "style.yaml")
ROUTES = ("corrections", "dpo", "teacher", "more-data")


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write(path: Path, rs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs))
    return path


class Loop:
    def __init__(self, a):
        self.a, self.out = a, Path(a.out)
        self.exe = str(Path(sys.executable).parent / "tunesmith")
        self.env = {**os.environ, "TUNESMITH_REGISTRY": str(self.out / "registry.db"), "HF_HUB_OFFLINE": "1"}
        self.times: dict[str, float] = {}
        self.corrections = f"corrections-r{a.replay_ratio:g}"

    def run(self, what: str, *args: str, ok=(0,)) -> str:
        t0 = time.time()
        log = self.out / "logs" / f"{what}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as err:
            p = subprocess.run([self.exe, *args], stdout=subprocess.PIPE, stderr=err, text=True, env=self.env)
        self.times[what] = self.times.get(what, 0) + time.time() - t0
        if p.returncode not in ok:
            sys.exit(f"failed ({p.returncode}): tunesmith {' '.join(args)}\n{log.read_text()[-3000:]}")
        print(f"  {what}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        return p.stdout

    def train(self, name: str, *args: str) -> None:
        val = [] if "dpo" in args else ["--val", str(DATA / "val.jsonl")]  # DPO holds out its own pairs
        out = ["--out", str(self.out / "runs" / name), "--epochs", str(self.a.epochs)]
        self.run(f"train-{name}", "train", *args, *out, "--precision", self.a.precision, *val, "--quiet")

    def evaluate(self, name: str, data: Path, gate: bool) -> dict:
        out = self.out / "eval" / (name if data == DATA / "test.jsonl" else f"{name}-{data.stem}")
        args = [
            "eval",
            "--adapter",
            str(self.out / "runs" / name),
            "--data",
            str(data),
            "--style",
            STYLE,
            "--max-new-tokens",
            str(self.a.max_new_tokens),
            "--out",
            str(out),
            "--quiet",
        ]
        self.run(f"eval-{name}-{data.stem}", *args, *(["--gate", "v1"] if gate else []), ok=(0, 3))
        return json.loads((out / "results.json").read_text())

    # ------------------------------------------------------------ the parts

    def split(self) -> dict[str, Path]:
        train = rows(DATA / "train.jsonl")
        a = self.a
        v1, pool = train[: a.v1], train[a.v1 : a.v1 + a.pool]
        unlabeled = [
            {"messages": r["messages"][:-1]} for r in train[a.v1 + a.pool : a.v1 + a.pool + a.unlabeled]
        ]
        d = self.out / "data"
        return {
            "v1": write(d / "v1" / "train.jsonl", v1),
            "pool": write(d / "pool.jsonl", pool),
            "unlabeled": write(d / "unlabeled.jsonl", unlabeled),
            "more": write(d / "more" / "train.jsonl", v1 + pool),
        }

    def reviewer(self, pool_eval: dict, pool: Path) -> list[tuple[dict, str]]:
        """The stand-in reviewer: the pool examples v1 did worst on (ROUGE-L), each with v1's notes."""
        src = rows(pool)
        ex = pool_eval["examples"]
        worst = sorted(range(len(ex)), key=lambda i: (ex[i]["scores"]["rougeL"], i))
        return [(src[i], ex[i]["output"]) for i in worst]

    def route_corrections(self, worst, files) -> None:
        fixes = write(self.out / "data" / "corrections.jsonl", [r for r, _ in worst[: self.a.k]])
        self.train(
            self.corrections,
            "--data",
            str(fixes),
            "--from-adapter",
            str(self.out / "runs" / "v1"),
            "--replay",
            str(files["v1"]),
            "--replay-ratio",
            str(self.a.replay_ratio),
        )

    def route_dpo(self, worst, n: int) -> None:
        pairs = []
        for r, output in worst[:n]:
            user = [m for m in r["messages"] if m["role"] == "user"][-1]["content"]
            pairs.append({"prompt": user, "chosen": r["messages"][-1]["content"], "rejected": output or "-"})
        data = write(self.out / "data" / f"pairs-{n}.jsonl", pairs)
        self.train(
            f"dpo-{n}",
            "--method",
            "dpo",
            "--data",
            str(data),
            "--from-adapter",
            str(self.out / "runs" / "v1"),
            "--allow-few-pairs",
        )

    def route_teacher(self, files) -> int:
        drafts = self.out / "data" / "drafts.jsonl"
        self.run(
            "gen-teacher",
            "data",
            "generate",
            "--teacher",
            self.a.teacher or str(self.out / "runs" / "v1"),
            "--inputs",
            str(files["unlabeled"]),
            "--out",
            str(drafts),
            "--style",
            STYLE,
            "--best-of",
            str(self.a.best_of),
            "--max-tokens",
            str(self.a.max_new_tokens),
            "--batch-size",
            "8",
            "--quiet",
            ok=(0, 1),
        )
        # the stand-in accepts a draft in style that ended by itself (a person would not take a cut-off note)
        kept = [d for d in rows(drafts) if d["draft"].get("style_ok") and d["draft"]["finish"] != "length"]
        accepted = write(self.out / "data" / "accepted.jsonl", [{"messages": d["messages"]} for d in kept])
        if kept:
            self.train(
                "teacher",
                "--data",
                str(accepted),
                "--from-adapter",
                str(self.out / "runs" / "v1"),
                "--replay",
                str(files["v1"]),
            )
        return len(kept)

    def main(self) -> dict:
        a, out = self.a, self.out
        out.mkdir(parents=True, exist_ok=True)
        files = self.split()
        test = DATA / "test.jsonl"
        if not (out / "runs" / "v1").exists():
            self.train("v1", "--data", str(files["v1"]))
        results = {"v1": self.evaluate("v1", test, gate=False)}
        notes: dict[str, str] = {}
        if {"corrections", "dpo"} & set(a.routes):
            worst = self.reviewer(self.evaluate("v1", files["pool"], gate=False), files["pool"])
        if "corrections" in a.routes:
            self.route_corrections(worst, files)
            results[self.corrections] = self.evaluate(self.corrections, test, gate=True)
            notes[self.corrections] = (
                f"{a.k} corrected notes + {round(a.k * a.replay_ratio)} of v1's replayed"
            )
        for n in a.dpo_pairs if "dpo" in a.routes else []:
            self.route_dpo(worst, n)
            results[f"dpo-{n}"] = self.evaluate(f"dpo-{n}", test, gate=True)
            notes[f"dpo-{n}"] = f"{n} pairs (corrected over v1's), SFT term 1"
        if "teacher" in a.routes:
            kept = self.route_teacher(files)
            notes["teacher"] = f"{kept} of {a.unlabeled} drafts passed the style rules (best of {a.best_of})"
            if kept:
                results["teacher"] = self.evaluate("teacher", test, gate=True)
        if "more-data" in a.routes:
            self.train("more-data", "--data", str(files["more"]))
            results["more-data"] = self.evaluate("more-data", test, gate=True)
            notes["more-data"] = f"{a.v1} + {a.pool} examples with their notes, from the base model"
        return {"results": results, "notes": notes, "times": self.times}


def cell(res: dict, metric: str) -> str:
    m = res["metrics"]
    lo, hi = m["ci95"].get(metric, (None, None))
    return f"{m[metric]:.1f} [{lo:.1f}, {hi:.1f}]" if lo is not None else f"{m[metric]:.1f}"


def change(res: dict, metric: str) -> str:
    g = (res.get("gate") or {}).get("metrics", {}).get(metric)
    if not g:
        return "–"
    ci = f" [{g['ci'][0]:+.1f}, {g['ci'][1]:+.1f}]" if g.get("ci") else ""
    mark = (
        " **worse**"
        if g.get("worse")
        else (" **better**" if g.get("significant") and g["change"] > 0 else "")
    )
    return f"{g['change']:+.1f}{ci}, p {g['p']}{mark}"


def table(done: dict, a) -> list[str]:
    out = [
        f"Command: `.venv/bin/python benchmarks/loop.py {' '.join(sys.argv[1:])}`; {platform.node()}, "
        f"{os.cpu_count()} cores, CPU flags: {flags_text()}; {time.strftime('%Y-%m-%d')}",
        "",
        "| route | what v2 learned | ROUGE-L [95 %] | vs v1 (paired) | format adherence | vs v1 | "
        "stopped by itself | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    times = done["times"]
    for name, res in done["results"].items():
        t = (
            sum(v for k, v in times.items() if k.split("-", 1)[1].startswith(name))
            if name != "v1"
            else sum(v for k, v in times.items() if k in ("train-v1", "eval-v1-test"))
        )
        out.append(
            f"| {name} | {done['notes'].get(name, f'{a.v1} examples')} | {cell(res, 'rougeL')} | "
            f"{change(res, 'rougeL')} | {cell(res, 'format_adherence')} | "
            f"{change(res, 'format_adherence')} | {cell(res, 'stopped_by_eos')} | {t / 60:.0f} min |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="work folder (kept; a run already there is reused)")
    ap.add_argument("--routes", default=",".join(ROUTES), help=f"which of {', '.join(ROUTES)}")
    ap.add_argument("--v1", type=int, default=50, help="training examples v1 learns from")
    ap.add_argument("--pool", type=int, default=40, help="review pool (with notes the reviewer may use)")
    ap.add_argument("--unlabeled", type=int, default=20, help="transcripts the teacher drafts notes for")
    ap.add_argument("--k", type=int, default=20, help="worst pool outputs the stand-in reviewer corrects")
    ap.add_argument("--dpo-pairs", default="5,20", help="pair counts for the dpo route")
    ap.add_argument("--replay-ratio", type=float, default=3.0, help="the corrections route's --replay-ratio")
    ap.add_argument("--best-of", type=int, default=2, help="teacher drafts sampled per transcript")
    ap.add_argument(
        "--teacher", help="the teacher route's teacher: an endpoint URL or a model/run (default: v1 itself)"
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precision", default="bf16", help="training precision (fp32 on AVX2-only CPUs)")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    a = ap.parse_args()
    a.routes = [r.strip() for r in a.routes.split(",") if r.strip()]
    a.dpo_pairs = [int(x) for x in a.dpo_pairs.split(",") if x.strip()]
    done = Loop(a).main()
    (Path(a.out) / "loop.json").write_text(json.dumps({**done, "args": vars(a)}, indent=2))
    print("\n".join(table(done, a)))


if __name__ == "__main__":
    main()
