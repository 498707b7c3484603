"""`tunesmith eval --gate REF`: stop a worse version from shipping.

After scoring, the candidate is compared with REF (a run id, tag such as v9 or production, or a
results.json) on the same frozen test set: the same examples (inputs and references, in order) and
the same decoding settings, else a clear error, because a difference on other examples or other
settings says nothing about the versions. Each gated metric (default: the headline text metric and
format adherence, where both runs have them, and every hosted grader of `--grader`; for a run trained
with --task, accuracy and macro-F1, micro-F1 and macro-F1, or RMSE: eval/label_pairs.py) gets the paired
bootstrap test of `tunesmith eval`; the p-values are Holm-corrected across the gated metrics (several
metrics are several chances of a false alarm), and the gate fails, with its own exit code, when any
metric is significantly worse.

REF as a training run means its newest registered eval on this test set with these settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.eval.label_pairs import GATED, is_label_result, worse
from tunesmith.eval.rows import GRADER, same_test
from tunesmith.eval.run import compare
from tunesmith.registry.db import Registry
from tunesmith.scoring.stats import holm

GATE_FAILED = 3  # the exit code of a failed gate (2 is a usage error, 1 a data error)
DEFAULT_METRICS = ("rougeL", "format_adherence")
NO_DIRECTION = {"length_ratio", "mean_new_tokens", "stopped_by_eos"}  # neither more nor less is better
ALPHA = 0.05


class GateFailed(UserError):
    exit_code = GATE_FAILED


def reference_results(ref: str, candidate: dict, registry_path: str | None = None) -> tuple[dict, str]:
    """The results to gate against, and how to name them."""
    p = Path(ref)
    if p.suffix == ".json" or p.is_file():
        try:
            return json.loads(p.read_text()), str(p)
        except (OSError, ValueError) as e:
            raise UserError(f"--gate {ref}: not a results.json written by `tunesmith eval` ({e})") from None
    reg = Registry(registry_path)
    run = reg.get(reg.find(ref))
    if run["kind"] == "eval":
        return run["result"], f"{ref} (eval {run['id']})"
    tried = 0
    for child in run["children"]:
        ev = reg.get(child["run"])
        if ev["kind"] != "eval" or not ev["result"]:
            continue
        tried += 1
        if same_test(candidate, ev["result"]) is None:
            return ev["result"], f"{ref} (run {run['id']}, eval {ev['id']})"
    what = f"none of its {tried} registered evals is" if tried else "it has no registered eval"
    raise UserError(
        f"--gate {ref}: {what} on this test set with these decoding settings; evaluate it first "
        f"(`tunesmith eval --adapter {ref} --data ...` with the same flags) or pass its results.json"
    )


def metrics_flag(text: str | None, ref: str | None) -> list[str] | None:
    """--gate-metrics M1,M2 (None: the defaults)."""
    names = [m.strip() for m in (text or "").split(",") if m.strip()] or None
    if names and not ref:
        raise UserError("--gate-metrics goes with --gate REF")
    return names


def apply(results: dict, ref: str | None, registry: str | None, metrics: list[str] | None):
    """--gate REF on fresh results -> (passed or None, the error to raise once the measurements are written
    and registered: a comparison that cannot be made still keeps them). The verdict goes in results."""
    if not ref:
        return None, None
    try:
        reference, name = reference_results(ref, results, registry)
        results["gate"] = check(results, reference, name, metrics)
    except UserError as e:
        return None, e
    return results["gate"]["passed"], None


def check(candidate: dict, reference: dict, name: str, metrics: list[str] | None = None) -> dict:
    """The gate's verdict: {"passed", "reference", "n", "metrics": {metric: change, ci, p, p_holm, worse}}."""
    why = same_test(candidate, reference)
    if why:
        raise UserError(
            f"--gate {name}: not the same frozen test set and decoding ({why}); gate against an eval "
            "of the same --data with the same settings"
        )
    # same_test found the same inputs and references in order: align the reference's file locations
    # to the candidate's, so a test file that moved or was copied still pairs example by example
    aligned = [
        {**y, "path": x.get("path"), "line": x.get("line"), "where": x.get("where")}
        for x, y in zip(candidate["examples"], reference["examples"])
    ]
    tests = compare(candidate, {**reference, "examples": aligned}) or {}
    labels = is_label_result(candidate)
    if metrics:
        bad = [k for k in metrics if k in NO_DIRECTION]
        if bad:
            raise UserError(
                f"--gate-metrics {','.join(bad)}: neither higher nor lower is better; gate on others"
            )
        missing = [k for k in metrics if k not in tests]
        if missing:
            have = ", ".join(sorted(k for k in tests if k not in NO_DIRECTION))
            raise UserError(
                f"--gate-metrics {','.join(missing)}: not measured in both runs (both have: {have})"
            )
        gated = list(metrics)
    elif labels:  # a --task run: its headline measure, and macro-F1 where there are classes
        gated = [k for k in GATED[candidate["task"]] if k in tests]
    else:  # the headline metrics, and each hosted grader (a hosted eval's testing criteria)
        gated = [k for k in DEFAULT_METRICS if k in tests]
        gated += [k for k in tests if k.startswith(GRADER) and not k.endswith(":pass")]
    if not gated:
        raise UserError(
            f"--gate {name}: no gated metric was measured in both runs; name some with --gate-metrics"
        )
    adjusted = holm({k: tests[k]["p"] if tests[k]["p"] is not None else 1.0 for k in gated})
    rows = {}
    for k in gated:
        t = tests[k]
        rows[k] = {
            **t,
            "p_holm": round(adjusted[k], 4),
            "worse": worse(k, t["change"]) and adjusted[k] < ALPHA,
        }
    return {
        "passed": not any(r["worse"] for r in rows.values()),
        "reference": name,
        "n": len(candidate.get("examples") or []),
        "alpha": ALPHA,
        "correction": "holm",
        "metrics": rows,
    }


def describe(verdict: dict) -> str:
    parts = []
    for k, r in verdict["metrics"].items():
        ci = f", 95 % interval {r['ci'][0]:+.2f} to {r['ci'][1]:+.2f}" if r.get("ci") else ""
        parts.append(f"{k} {r['change']:+.2f}{ci}, Holm-adjusted p {r['p_holm']:.3f}")
    on = f"on the same {verdict['n']} examples"
    if verdict["passed"]:
        return f"gate passed: not significantly worse than {verdict['reference']} {on} ({'; '.join(parts)})"
    worse = [k for k, r in verdict["metrics"].items() if r["worse"]]
    return (
        f"gate failed: significantly worse than {verdict['reference']} {on} on {', '.join(worse)} "
        f"({'; '.join(parts)})"
    )
