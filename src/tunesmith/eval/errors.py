"""Error analysis: where and why a system fails on its test set, as groups a person can act on, and
which groups got better or worse between two evals of the same test set (`tunesmith errors`).

A mean says a version is worse; it does not say what to fix. The groups do: each failure cause
(every `--style` rule broken, did not stop, far too long or short against the reference, the
bottom quarter of the metric, a wrong label) and each slice of the test set (input length, any
`metadata` field of the test examples, such as topic or source) with its count, its share, its mean
metric and its worst three examples. Groups are ranked by what they cost: `if_like_rest` is how much
the whole test set's mean would rise if this group scored like the other examples, so the first
row is where the next round of data or corrections buys the most.

Between two evals (v1 then v2, the same examples in the same order, checked as the gate does) each
group of v1's is followed example by example: v2's mean on the same examples, the paired change
with its bootstrap interval and p (scoring/stats.paired_test), and how many of the examples still
fail that way. A cause that appears only in v2 is added with its own examples.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.eval.rows import per_example_values, same_test
from tunesmith.registry.db import Registry
from tunesmith.scoring.stats import paired_test

TOO_LONG, TOO_SHORT = 1.5, 0.5  # output words / reference words
MAX_META_VALUES = 12  # a metadata field with more distinct values is an id, not a slice
SNIPPET = 240  # characters of an output or a reference shown for a worst example
FAILURES = ("style", "stop", "length", "label", "metric")  # kinds that are a way of failing, not a slice


@dataclass
class Group:
    kind: str  # style, stop, length, label, metric (failures) · input, meta (slices)
    name: str
    members: list[int] = field(default_factory=list)
    threshold: float | None = None  # the metric bucket's bound, kept when two evals are compared


def default_metric(system: dict) -> str:
    scores = (system.get("examples") or [{}])[0].get("scores") or {}
    for m in ("rougeL", "label_accuracy", "judge", "token_f1", "embedding"):
        if m in scores:
            return m
    if scores:
        return next(iter(scores))
    raise UserError("this eval has no per-example scores to analyse")


def failure_groups(examples: list[dict], values: list[float]) -> list[Group]:
    """The ways an example can fail, each with the examples that failed that way."""
    groups: dict[str, Group] = {}

    def add(kind: str, name: str, i: int) -> None:
        groups.setdefault(name, Group(kind, name)).members.append(i)

    q1 = statistics.quantiles(values, n=4)[0] if len(values) >= 4 else min(values)
    for i, ex in enumerate(examples):
        for rule, ok in (ex.get("style") or {}).items():
            if ok is False:
                add("style", f"style: {rule}", i)
        if ex.get("stopped") is False:
            add("stop", "did not stop (ran to --max-new-tokens)", i)
        ratio = (ex.get("scores") or {}).get("length_ratio")
        if not (ex.get("output") or "").strip():
            add("length", "empty output", i)
        elif ratio is not None and ratio > TOO_LONG:
            add("length", f"too long (over {TOO_LONG:g}x the reference's words)", i)
        elif ratio is not None and ratio < TOO_SHORT:
            add("length", f"too short (under {TOO_SHORT:g}x the reference's words)", i)
        label = ex.get("label")
        if label and label.get("gold") != label.get("predicted"):
            add("label", f"wrong label: {label.get('gold')} taken for {label.get('predicted')}", i)
        if values[i] <= q1:
            add("metric", f"bottom quarter of the metric (<= {q1:.1f})", i)
            groups[f"bottom quarter of the metric (<= {q1:.1f})"].threshold = q1
    return list(groups.values())


def slice_groups(examples: list[dict]) -> list[Group]:
    """The test set cut by input length (thirds by prompt tokens) and by each metadata field."""
    out: list[Group] = []
    sizes = [ex.get("prompt_tokens") or len((ex.get("input") or "").split()) for ex in examples]
    if len(examples) >= 6:
        lo, hi = statistics.quantiles(sizes, n=3)
        unit = "tokens" if examples[0].get("prompt_tokens") else "words"
        for name, keep in ((f"inputs of <= {lo:.0f} {unit}", lambda s: s <= lo),
                           (f"inputs of {lo:.0f}-{hi:.0f} {unit}", lambda s: lo < s <= hi),
                           (f"inputs of > {hi:.0f} {unit}", lambda s: s > hi)):  # fmt: skip
            members = [i for i, s in enumerate(sizes) if keep(s)]
            if members:
                out.append(Group("input", name, members))
    fields: dict[str, dict[str, list[int]]] = {}
    for i, ex in enumerate(examples):
        for k, v in (ex.get("meta") or {}).items():
            if isinstance(v, (str, int, float, bool)):
                fields.setdefault(k, {}).setdefault(str(v), []).append(i)
    for k, values in sorted(fields.items()):
        if 2 <= len(values) <= MAX_META_VALUES and max(len(m) for m in values.values()) >= 2:
            out += [Group("meta", f"{k} = {v}", m) for v, m in sorted(values.items())]
    gold = Counter((ex.get("label") or {}).get("gold") for ex in examples)
    if len(gold) > 1 and None not in gold:
        by: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            by.setdefault(ex["label"]["gold"], []).append(i)
        out += [Group("meta", f"gold label = {g}", m) for g, m in sorted(by.items())]
    return out


def _snip(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


def describe(g: Group, examples: list[dict], values: list[float], worst: int) -> dict:
    n, total = len(values), sum(values)
    mean = statistics.fmean(values[i] for i in g.members)
    rest = (total - sum(values[i] for i in g.members)) / (n - len(g.members)) if len(g.members) < n else mean
    overall = total / n
    ranked = sorted(g.members, key=lambda i: (values[i], i))[:worst]
    return {
        "kind": g.kind,
        "failure": g.kind in FAILURES,
        "name": g.name,
        "count": len(g.members),
        "share": round(100 * len(g.members) / n, 1),
        "mean": round(mean, 2),
        "rest": round(rest, 2),
        "if_like_rest": round(max(0.0, (total + len(g.members) * (rest - mean)) / n - overall), 2),
        "members": g.members,
        **({"threshold": round(g.threshold, 4)} if g.threshold is not None else {}),
        "worst": [
            {
                "example": i + 1,
                "path": examples[i].get("path"),
                "line": examples[i].get("line"),
                "value": round(values[i], 2),
                "output": _snip(examples[i].get("output")),
                "reference": _snip(examples[i].get("reference")),
            }
            for i in ranked
        ],  # fmt: skip
    }


def analyse(system: dict, metric: str | None = None, worst: int = 3) -> dict:
    """The groups of one system's results (`results` or one of `results["systems"]`), costliest first."""
    examples = system.get("examples") or []
    if not examples:
        raise UserError("this eval has no examples to analyse")
    metric = metric or default_metric(system)
    try:
        values = per_example_values(examples, metric)
    except KeyError:
        known = ", ".join(sorted(examples[0].get("scores") or {})) or "none"
        raise UserError(f"--metric {metric}: not scored in this eval (scored: {known})") from None
    groups = [
        describe(g, examples, values, worst)
        for g in failure_groups(examples, values) + slice_groups(examples)
    ]
    groups.sort(key=lambda g: (-g["if_like_rest"], not g["failure"], -g["count"], g["name"]))
    return {
        "system": system.get("system"),
        "data": system.get("data"),
        "metric": metric,
        "n": len(examples),
        "mean": round(statistics.fmean(values), 2),
        "style": system.get("style"),
        "groups": groups,
    }


def compare(before: dict, after: dict, metric: str | None = None, worst: int = 3) -> dict:
    """Which of `before`'s groups got better or worse in `after`, on the same examples (paired); a way of
    failing only `after` has is added, followed on its own examples (`new`, `count` 0 before)."""
    why = same_test(after, before)
    if why:
        raise UserError(
            f"errors: the two evals are not on the same test examples with the same decoding ({why})"
        )
    a = analyse(before, metric, worst)
    b = analyse(after, a["metric"], worst)
    va = per_example_values(before["examples"], a["metric"])
    vb = per_example_values(after["examples"], a["metric"])
    later = {g["name"]: set(g["members"]) for g in b["groups"]}
    seen = {g["name"] for g in a["groups"]}
    rows = []
    for g in a["groups"] + [
        g for g in b["groups"] if g["failure"] and g["kind"] != "metric" and g["name"] not in seen
    ]:
        m = g["members"]
        test = paired_test([vb[i] for i in m], [va[i] for i in m])
        if g["kind"] == "metric":  # the same bound in both: how many of the whole set are still below it
            after_members = {i for i, v in enumerate(vb) if v <= g["threshold"]}
        else:
            after_members = later.get(g["name"], set())
        change = "better" if test["significant"] and test["change"] > 0 else (
            "worse" if test["significant"] and test["change"] < 0 else "no clear change")  # fmt: skip
        new = g["name"] not in seen  # a way of failing the second eval has and the first had not
        rows.append({
            "kind": g["kind"], "failure": g["failure"], "name": g["name"], "new": new,
            "count": 0 if new else len(m), "examples": len(m),
            "count_after": len(after_members) if g["failure"] else len(m),
            "still": len(after_members & set(m)) if g["failure"] else None,
            "before": round(statistics.fmean(va[i] for i in m), 2),
            "after": round(statistics.fmean(vb[i] for i in m), 2), **test, "verdict": change,
        })  # fmt: skip
    rows.sort(key=lambda r: (r["verdict"] == "no clear change", -abs(r["change"]), r["name"]))
    overall = paired_test(vb, va)
    return {"metric": a["metric"], "n": a["n"], "before": a, "after": b, "overall": overall, "groups": rows}


def system_of(results: dict, name: str | None) -> dict:
    """One system's results: the one named, else the last (the tuned model in a base,tuned eval)."""
    systems = results.get("systems") or [results]
    if name is None:
        return systems[-1]
    for s in systems:
        if s.get("system") == name:
            return s
    known = ", ".join(str(s.get("system")) for s in systems)
    raise UserError(f"--system {name}: not in this eval (systems: {known})")


def newest_eval(reg: Registry, run: dict) -> dict | None:
    """The newest registered eval made from a run (children come oldest first), or None."""
    for child in reversed(run.get("children") or []):
        c = reg.get(child["run"])
        if c["kind"] == "eval":
            return c
    return None


def registered_eval(reg: Registry, ref: str, paths: bool = True) -> dict:
    """An eval in the registry: named itself, or a trained run standing for its newest eval.
    `paths=False` (the web app): a reference is never looked up on disk."""
    run = reg.get(reg.find(ref, paths=paths))
    if run["kind"] != "eval":
        ev = newest_eval(reg, run)
        if ev is None:
            raise UserError(f"{ref}: a {run['kind']} run with no registered eval; `tunesmith eval` it first")
        run = ev
    if not run.get("result"):
        raise UserError(f"{ref}: eval {run['id']} has no results in the registry")
    return run


def registered_results(reg: Registry, ref: str) -> tuple[dict, str]:
    """An eval's results from the registry, with how to name it."""
    run = registered_eval(reg, ref)
    return run["result"], f"{run['name']} (eval {run['id']})"


def peers(reg: Registry, result: dict, own: str, limit: int = 500) -> list[dict]:
    """The other registered evals on the same test examples with the same decoding: what it can be compared
    with, newest first."""
    out = []
    for r in reg.runs(kind="eval", limit=limit):
        if r["id"] == own:
            continue
        other = reg.get(r["id"]).get("result") or {}
        if (other.get("examples") or other.get("systems")) and same_test(
            system_of(result, None), system_of(other, None)
        ) is None:
            out.append({"id": r["id"], "name": r["name"], "started": r["started"]})  # fmt: skip
    return out


def load_results(ref: str, registry: str | None) -> tuple[dict, str]:
    """An eval's results from a results.json, an eval's --out folder, or the registry (an eval, or a
    trained run: its newest eval); with how to name it."""
    p = Path(ref)
    path = p / "results.json" if p.is_dir() else p
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a results.json written by `tunesmith eval` ({e})") from None
        if not isinstance(data, dict) or not (data.get("examples") or data.get("systems")):
            raise UserError(f"{path}: not a results.json written by `tunesmith eval` (no examples)")
        return data, str(path)
    if p.is_dir():
        raise UserError(f"{ref}: a folder without results.json; give an eval's --out folder, its "
                        "results.json, or an eval or run in the registry")  # fmt: skip
    return registered_results(Registry(registry), ref)


# ---------------------------------------------------------------- as text


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(head), *(fmt(r) for r in rows)]


def lines(a: dict, name: str, top: int = 12) -> list[str]:
    """One eval's groups as a table, then the worst examples of the costliest groups."""
    out = [f"{name}: {a['system'] or 'system'} on {a['n']} examples, {a['metric']} mean {a['mean']:.1f}",
           "groups, costliest first (if like rest: the mean's rise if the group scored like the others)",
           ""]  # fmt: skip
    rows = [[g["name"], str(g["count"]), f"{g['share']:.0f}%", f"{g['mean']:.1f}", f"{g['rest']:.1f}",
             f"+{g['if_like_rest']:.1f}"] for g in a["groups"][:top]]  # fmt: skip
    out += _table(["group", "count", "share", a["metric"], "rest", "if like rest"], rows)
    if len(a["groups"]) > top:
        out.append(f"... {len(a['groups']) - top} more groups (--json lists them all)")
    for g in [g for g in a["groups"] if g["failure"] and g["if_like_rest"] > 0][:3]:
        out += ["", f"worst of '{g['name']}':"]
        for w in g["worst"]:
            shown = w["output"] if len(w["output"]) <= 120 else w["output"][:119] + "…"
            out.append(
                f"  #{w['example']} {w['path']}:{w['line']}  {a['metric']} {w['value']:.1f}  {shown!r}"
            )
    if not a["groups"]:
        out.append("no failure groups: every example passed every check")
    return out


def compare_lines(c: dict, first: str, second: str, top: int = 15) -> list[str]:
    o = c["overall"]
    ci = f" [{o['ci'][0]:+.1f}, {o['ci'][1]:+.1f}]" if o["ci"] else ""
    out = [f"{second} against {first} on the same {c['n']} examples: {c['metric']} "
           f"{c['before']['mean']:.1f} -> {c['after']['mean']:.1f} ({o['change']:+.1f}{ci}, p {o['p']})",
           "each group of the first eval followed example by example (paired bootstrap, 95 % interval)",
           ""]  # fmt: skip
    rows = []
    for r in c["groups"][:top]:
        ci = f"[{r['ci'][0]:+.1f}, {r['ci'][1]:+.1f}]" if r["ci"] else "-"
        count = f"{r['count']} -> {r['count_after']}" if r["failure"] else str(r["count"])
        rows.append([r["name"], count, f"{r['before']:.1f}", f"{r['after']:.1f}", f"{r['change']:+.1f}", ci,
                     "<0.001" if r["p"] == 0 else str(r["p"]), r["verdict"]])  # fmt: skip
    out += _table(["group", "count", "before", "after", "change", "95% interval", "p", ""], rows)
    if len(c["groups"]) > top:
        out.append(f"... {len(c['groups']) - top} more groups (--json lists them all)")
    return out
