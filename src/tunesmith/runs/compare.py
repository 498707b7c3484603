"""`tunesmith runs compare A B [C ...]`: what changed between versions, and did it help.

Three parts, each against the first run: the settings that differ; the data, example by example
(added, removed, changed: an example is known by its prompt, and changed when its answer differs);
and the metrics of the runs' evals on one frozen test set with the paired test of `tunesmith eval`.
Metrics measured on different test sets or decoding settings are not comparable, so without a
common one the command says so and stops, unless --allow-different-test (then no paired tests).

Example-level data diffs need the data files as they were: a file whose sha256 no longer matches
what the run recorded is compared by its hash only, and the output says so.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.formats import load_examples, messages_digest
from tunesmith.errors import UserError
from tunesmith.eval.rows import same_test
from tunesmith.eval.run import compare as paired
from tunesmith.models.chat import last_assistant
from tunesmith.models.weightfiles import sha256_file
from tunesmith.registry.db import Registry

SKIP_CONFIG = {"out"}  # differs for every run by construction
METRICS = ("rougeL", "rouge1", "bleu", "chrf", "format_adherence", "judge", "exact_match", "mean_new_tokens",
           "accuracy", "macro_f1", "micro_f1", "rmse", "mae", "pearson", "spearman", "r2")  # fmt: skip


def label(r: dict) -> str:
    return f"{r['name']} ({r['id']})"


def config_diff(runs: list[dict]) -> list[str]:
    cfgs = [r.get("config") or {} for r in runs]
    keys = sorted({k for c in cfgs for k in c} - SKIP_CONFIG)
    lines = []
    for k in keys:
        values = [c.get(k) for c in cfgs]
        if any(v != values[0] for v in values[1:]):
            lines.append(f"  {k:<16} " + " -> ".join(repr(v) for v in values))
    return lines or ["  (the same settings)"]


def _examples(d: dict) -> dict[int, int] | None:
    """{prompt digest: full digest} of a recorded data file, if the file is still as recorded."""
    p = Path(d["path"])
    try:
        if not p.is_file() or sha256_file(p) != d["sha256"]:
            return None
        out = {}
        for ex in load_examples(p, "data", kind=None):
            prompt = messages_digest(ex.messages[: last_assistant(ex.messages)])
            out[prompt] = messages_digest(ex.messages, ex.rejected)
        return out
    except (OSError, UserError):
        return None


def data_diff(first: dict, other: dict) -> list[str]:
    """Per role, the files' examples in `other` against `first`."""
    lines = []
    roles = sorted({d["role"] for d in first["data"] + other["data"]})
    for role in roles:
        a = [d for d in first["data"] if d["role"] == role]
        b = [d for d in other["data"] if d["role"] == role]
        if sorted(d["sha256"] for d in a) == sorted(d["sha256"] for d in b):
            lines.append(f"  {role:<6} the same files ({', '.join(Path(d['path']).name for d in b)})")
            continue
        ea, eb = {}, {}
        stale = []
        for d, into in [(d, ea) for d in a] + [(d, eb) for d in b]:
            got = _examples(d)
            if got is None:
                stale.append(d["path"])
            else:
                into.update(got)
        if stale:
            lines.append(f"  {role:<6} files differ by sha256; " + ", ".join(sorted(set(stale)))
                         + " changed or moved since, so examples cannot be compared")  # fmt: skip
            continue
        added = sum(1 for k in eb if k not in ea)
        removed = sum(1 for k in ea if k not in eb)
        changed = sum(1 for k in eb if k in ea and ea[k] != eb[k])
        lines.append(
            f"  {role:<6} {len(ea)} -> {len(eb)} examples: {added} added, {removed} removed, {changed} "
            "changed"
        )
    return lines


def evals_of(reg: Registry, r: dict) -> list[dict]:
    """The evals that speak for a run: itself if it is an eval, else its registered evals, newest first."""
    if r["kind"] == "eval":
        return [r]
    found = [reg.get(c["run"]) for c in r["children"]]
    return sorted((e for e in found if e["kind"] == "eval" and e["result"]), key=lambda e: -e["started"])


def common_test(evals: list[list[dict]]) -> list[dict] | None:
    """One eval per run, all on the same test set with the same decoding (the newest such set)."""
    for first in evals[0]:
        pick = [first]
        for others in evals[1:]:
            match = next((e for e in others if same_test(first["result"], e["result"]) is None), None)
            if match is None:
                break
            pick.append(match)
        else:
            return pick
    return None


def metric_table(runs: list[dict], picked: list[dict], tested: bool) -> list[str]:
    results = [e["result"] for e in picked]
    shared = [k for k in METRICS if all(k in (r.get("metrics") or {}) for r in results)]
    head = f"  {'metric':<18}" + "".join(f"{r['name'][:14]:>16}" for r in runs)
    lines = [head]
    tests = [paired(r, results[0]) if tested else None for r in results[1:]]
    for k in shared:
        row = f"  {k:<18}" + "".join(f"{r['metrics'][k]:>16.2f}" for r in results)
        for r, t in zip(runs[1:], tests):
            if t and k in t:
                ci = t[k].get("ci")
                mark = " *" if t[k]["significant"] else ""
                span = f" ({ci[0]:+.2f} to {ci[1]:+.2f})" if ci else ""
                row += f"   {r['name'][:10]}: {t[k]['change']:+.2f}{span} p {t[k]['p']}{mark}"
        lines.append(row)
    return lines


def compare_runs(reg: Registry, refs: list[str], allow_different_test: bool = False) -> str:
    if len(refs) < 2:
        raise UserError("runs compare: give two or more runs (ids, tags or names)")
    runs = [reg.get(reg.find(x)) for x in refs]
    out = ["compare " + " -> ".join(label(r) for r in runs), "config"]
    out += config_diff(runs)
    for other in runs[1:]:
        out.append(f"data {label(runs[0])} -> {label(other)}")
        out += data_diff(runs[0], other)
    evals = [evals_of(reg, r) for r in runs]
    missing = [label(r) for r, e in zip(runs, evals) if not e]
    if missing:
        out.append(
            f"metrics: no registered eval for {', '.join(missing)} (run `tunesmith eval --adapter RUN ...`)"
        )
        return "\n".join(out)
    picked = common_test(evals)
    comparable = picked is not None
    if not comparable:
        if not allow_different_test:
            raise UserError(
                f"runs compare: {', '.join(label(r) for r in runs)} have no eval on one test set with the "
                "same "
                "decoding settings, so their metrics are not comparable; evaluate them with the same --data "
                "and flags, or pass --allow-different-test to list each run's newest eval without tests"
            )
        picked = [e[0] for e in evals]
        out.append("metrics (DIFFERENT test sets or decoding: not comparable, no paired tests)")
    else:
        res = picked[0]["result"]
        n = len(res.get("examples") or [])
        out.append(
            f"metrics on {res.get('data')} ({n} examples, same decoding), paired test against the first"
        )
    out += metric_table(runs, picked, tested=comparable)
    return "\n".join(out)
