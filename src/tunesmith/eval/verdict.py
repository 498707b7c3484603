"""The verdict of an eval with several systems: fine-tune, prompt, few-shot or RAG?

One plain sentence: which system scores highest on the headline metric, by how much over each
other system (the paired bootstrap change with its 95 % interval), whether that lead holds after
the Holm correction over the comparisons it took to pick a winner (with k systems the winner is
compared with k - 1 others: k - 1 chances of a lucky difference), and what each system costs per
answer (prompt tokens, new tokens, seconds). A lead that does not hold is said plainly.
"""

from __future__ import annotations

from tunesmith.eval.rows import per_example_values
from tunesmith.scoring.stats import holm, paired_test

METRICS = ("rougeL", "chrf", "bleu", "judge", "format_adherence")  # the headline: the first all systems have
ALPHA = 0.05


def cost(run: dict) -> dict:
    """What one answer of a system costs: mean prompt and new tokens, and seconds of generation."""
    rows = run.get("examples") or []
    n = max(len(rows), 1)
    return {
        "prompt_tokens": round(sum(r.get("prompt_tokens", 0) for r in rows) / n, 1),
        "new_tokens": round(sum(r.get("new_tokens", 0) for r in rows) / n, 1),
        "seconds": round(float(run.get("generation_s") or 0.0) / n, 3),
    }


def verdict(runs: list[dict]) -> dict | None:
    """The winner on the headline metric and whether its lead is significant; None for one system."""
    if len(runs) < 2:
        return None
    metric = next((k for k in METRICS if all(k in r.get("metrics", {}) for r in runs)), None)
    if metric is None:
        return None
    ranked = sorted(runs, key=lambda r: -r["metrics"][metric])
    best = ranked[0]
    tests = {
        r["system"]: paired_test(
            per_example_values(best["examples"], metric), per_example_values(r["examples"], metric)
        )
        for r in ranked[1:]
    }
    adjusted = holm({k: t["p"] if t["p"] is not None else 1.0 for k, t in tests.items()})
    margins = {k: {**t, "p_holm": round(adjusted[k], 4)} for k, t in tests.items()}
    runner_up = ranked[1]["system"]
    out = {
        "metric": metric,
        "winner": best["system"],
        "score": best["metrics"][metric],
        "runner_up": runner_up,
        "significant": all(m["p_holm"] < ALPHA and m["change"] > 0 for m in margins.values()),
        "margins": margins,
        "correction": f"holm over {len(margins)} comparisons",
        "cost": {r["system"]: cost(r) for r in runs},
    }
    out["sentence"] = sentence(out)
    return out


def sentence(v: dict) -> str:
    m = v["margins"][v["runner_up"]]
    ci = f" (95 % interval {m['ci'][0]:+.1f} to {m['ci'][1]:+.1f})" if m.get("ci") else ""
    lead = f"{m['change']:+.1f} {v['metric']} over {v['runner_up']}{ci}"
    costs = "; ".join(
        f"{s} {c['prompt_tokens']:,.0f} prompt + {c['new_tokens']:,.0f} new tokens, {c['seconds']:.2f} s"
        for s, c in v["cost"].items()
    )
    n = len(v["margins"])
    over = f"the Holm correction over {n} comparison{'s' * (n > 1)}"
    if v["significant"]:
        head = (
            f"{v['winner']} wins on {v['metric']} ({v['score']:.1f}): {lead}, significant against every "
            f"other system after {over}"
        )
    else:
        weakest = max(v["margins"].items(), key=lambda kv: kv[1]["p_holm"])
        head = (
            f"no clear winner on {v['metric']}: {v['winner']} leads ({v['score']:.1f}) by {lead}, but not "
            f"significantly against {weakest[0]} after {over} (adjusted p {weakest[1]['p_holm']:.3f})"
        )
    return f"{head}. Per answer: {costs}."
