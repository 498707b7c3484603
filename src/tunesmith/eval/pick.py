"""`tunesmith pick --data test.jsonl CANDIDATE ...`: which base model (or trained run) does best on one
test set, and at what cost per answer (seed 003: "experiment with different models to see which one
performs best").

A candidate is a model (an alias, a folder, a .gguf) scored as it is, a run trained to write text
(scored with its adapter), or a run trained with --task (its head). Each is evaluated by `tunesmith eval`
in a process of its own, so that its peak memory is its own (the kernel's high-water mark of that
process, from wait4) and one model's caches do not slow the next; the processes run one after another,
never together, as benchmarks must on a small machine. The table ranks them by the headline measure
(ROUGE-L for text, accuracy, micro-F1 or RMSE for labels), each with its 95 % interval, and tests every
other candidate against the best on the same examples (the paired bootstrap of `eval`). Cost per answer
is the eval's own time over the test examples (loading not counted) and the process's peak memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.eval.label_pairs import LOWER
from tunesmith.eval.run import compare
from tunesmith.models.heads import MEASURE
from tunesmith.models.loading import is_task_run
from tunesmith.models.resolve import ALIASES

TEXT_HEADLINE = "rougeL"


@dataclass
class Candidate:
    name: str
    spec: str
    kind: str  # "model", "adapter" (a run that writes text) or "task" (a run with a head)
    docs: int = 0  # +docs:K: answers with the K passages of `pick --docs INDEX` most like the question

    def eval_args(self, index: str | None = None) -> list[str]:
        if self.kind == "task":
            return ["--adapter", self.spec, "--systems", "tuned"]  # the head alone; the baselines are eval's
        plus = f"+docs:{self.docs}" if self.docs else ""
        docs = ["--docs", index] if self.docs and index else []
        if self.kind == "model":
            return ["--model", self.spec, "--systems", f"base{plus}", *docs]
        return ["--adapter", self.spec, "--systems", f"tuned{plus}", *docs]


def candidates(specs: list[str], index: str | None = None) -> list[Candidate]:
    """Each CANDIDATE as what it is; names unique (a folder's name, or the alias, and +docs:K)."""
    if len(specs) < 2:
        raise UserError("pick: give two or more candidates (models, or runs of `tunesmith train`)")
    out, seen = [], set()
    for raw in specs:
        spec, plus, k = raw.rpartition("+docs:") if "+docs:" in raw else (raw, "", "")
        if plus and (not k.isdigit() or int(k) < 1):
            raise UserError(f"pick: {raw}: +docs:K takes a number of passages, e.g. {spec}+docs:3")
        if plus and not index:
            raise UserError(f"pick: {raw} answers from documents: give their index with --docs INDEX")
        p = Path(spec)
        hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
        if not p.exists() and spec not in ALIASES and not hub_id:
            raise UserError(f"pick: {spec}: no such model, run or alias (aliases: {', '.join(ALIASES)})")
        kind = "task" if is_task_run(p) else "adapter" if (p / "adapter_config.json").is_file() else "model"
        if plus and kind == "task":
            raise UserError(f"pick: {raw}: a run trained with --task labels texts; it reads no passages")
        name = (p.name if p.exists() else spec) + (f"+docs:{k}" if plus else "")
        while name in seen:
            name += "'"
        seen.add(name)
        out.append(Candidate(name, spec, kind, int(k) if plus else 0))
    tasks = {c.kind == "task" for c in out}
    if len(tasks) > 1:
        raise UserError(
            "pick: runs trained with --task label or score texts and the others write text; compare them "
            "apart (the same test file cannot measure both)"
        )
    return out


def run_eval(
    c: Candidate, data: str, extra: list[str], out: Path, quiet: bool, index: str | None = None
) -> dict:
    """One candidate's eval in its own process (its own system alone): its results, wall time and peak
    memory (bytes)."""
    cmd = [sys.executable, "-m", "tunesmith.cli", "eval", *c.eval_args(index), "--data", data,
           "--out", str(out), "--registry", "off", "--quiet", *extra]  # fmt: skip
    if not quiet:
        print(f"pick: evaluating {c.name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            said = err.read().decode(errors="replace").strip().splitlines() or ["no output"]
            raise UserError(f"pick: the eval of {c.name} failed: {said[-1].removeprefix('error: ')}")
    results = json.loads((out / "results.json").read_text())
    return {"results": results, "wall_s": time.perf_counter() - t0, "peak_bytes": usage.ru_maxrss * 1024}


def headline(results: dict) -> str:
    return MEASURE[results["task"]] if results.get("task") in MEASURE else TEXT_HEADLINE


def per_answer_ms(results: dict) -> float | None:
    if results.get("task"):
        tuned = next((s for s in results.get("systems", []) if s.get("system") == "tuned"), {})
        return tuned.get("ms_per_example")
    n = results.get("n") or len(results.get("examples") or []) or 1
    return round(1000 * results["generation_s"] / n, 1) if "generation_s" in results else None


def pick(
    specs: list[str], data: str, extra: list[str], quiet: bool = False, index: str | None = None
) -> dict:
    """Every candidate evaluated on `data`, ranked by the headline, each tested against the best."""
    cands = candidates(specs, index)
    if index and not any(c.docs for c in cands):
        raise UserError("pick: --docs INDEX is read by candidates named NAME+docs:K (e.g. base+docs:3)")
    if extra and cands[0].kind == "task":
        raise UserError("pick: --limit, --max-new-tokens and --batch-size are for candidates that write text")
    if not Path(data).is_file() and not Path(data).is_dir():
        raise UserError(f"--data {data}: no such file or directory")
    with tempfile.TemporaryDirectory(prefix="tunesmith-pick-") as tmp:
        done = {
            c.name: run_eval(c, data, extra, Path(tmp) / str(i), quiet, index) for i, c in enumerate(cands)
        }
    key = headline(next(iter(done.values()))["results"])
    lower = key in LOWER

    def value(name: str) -> float:
        return done[name]["results"]["metrics"][key]

    order = sorted(done, key=value, reverse=not lower)
    best = done[order[0]]["results"]
    rows = []
    for name in order:
        r = done[name]["results"]
        test = None if name == order[0] else (compare(best, r) or {}).get(key)
        if name != order[0] and test is None:
            raise UserError(f"pick: {order[0]} and {name} were not scored on the same examples; no test")
        c = next(x for x in cands if x.name == name)
        rows.append(
            {
                "name": name,
                "candidate": c.spec,
                "kind": c.kind,
                "value": r["metrics"][key],
                "ci95": r["metrics"].get("ci95", {}).get(key),
                "against_best": test,
                "ms_per_answer": per_answer_ms(r),
                "peak_mib": round(done[name]["peak_bytes"] / 2**20),
                "wall_s": round(done[name]["wall_s"], 1),
                "metrics": {k: v for k, v in r["metrics"].items() if k != "ci95"},
            }
        )
    return {"data": data, "n": len(best.get("examples") or []), "metric": key,
            "lower_is_better": lower, "ranking": rows}  # fmt: skip


def lines(result: dict) -> list[str]:
    key, n = result["metric"], result["n"]
    better = "lower" if result["lower_is_better"] else "higher"
    out = [
        f"pick on {result['data']} ({n} examples): {key} ({better} is better) [95 % interval]; each against "
        "the best on the same examples (paired bootstrap); cost: eval time per answer, peak memory",
        f"{'candidate':<24}{key:>24}{'vs best':>30}{'ms/answer':>11}{'peak MiB':>10}",
    ]
    for r in result["ranking"]:
        ci = r["ci95"]
        cell = f"{r['value']:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
        t = r["against_best"]
        vs = (
            "best"
            if t is None
            else f"{-t['change']:+.3g}, p {t['p']:.3g}" + (" *" if t["significant"] else "")
        )
        ms = "-" if r["ms_per_answer"] is None else f"{r['ms_per_answer']:.3g}"
        out.append(f"{r['name'][:23]:<24}{cell:>24}{vs:>30}{ms:>11}{r['peak_mib']:>10}")
    top = result["ranking"][0]
    close = [r["name"] for r in result["ranking"][1:] if not r["against_best"]["significant"]]
    verdict = f"best: {top['name']}"
    if close:
        verdict += f"; not significantly better than {', '.join(close)} on these {n} examples"
        cheap = min((r for r in result["ranking"] if r["name"] in close or r is top),
                    key=lambda r: r["ms_per_answer"] or float("inf"))  # fmt: skip
        if cheap is not top:
            verdict += f" (of those, {cheap['name']} is the cheapest per answer)"
    return out + [verdict, "* = significantly different from the best (p < 0.05)"]
