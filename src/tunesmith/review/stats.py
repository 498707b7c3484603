"""`tunesmith review stats`: who judged how much, which output people prefer (win rate with a Wilson
interval; ties counted apart), ratings per output, and whether reviewers agree (Cohen's kappa on the
A/B items two people both judged; a reviewer's newest vote on an item counts)."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations

from tunesmith.registry.db import Registry
from tunesmith.review.store import KINDS, TIE, judgements, queue, queues
from tunesmith.scoring.stats import bootstrap_ci, cohen_kappa, paired_test, wilson


def win_rate(q: dict, votes: dict[tuple[str, int], str]) -> dict:
    """The queue's A/B result from each reviewer's newest vote per item."""
    c = Counter(votes.values())
    a, b, ties = c[q["a"]], c[q["b"]], c[TIE]
    decisive = a + b
    return {
        "a": q["a"], "b": q["b"], "a_wins": a, "b_wins": b, "ties": ties, "votes": decisive + ties,
        "a_win_rate": round(a / decisive, 4) if decisive else None,
        "interval": list(wilson(a, decisive)) if decisive else None,
    }  # fmt: skip


def metric_tests(items: list[dict], a: str, b: str) -> list[dict]:
    """Each metric of the queue's two outputs, as the eval reports it: both means with their bootstrap 95 %
    intervals, and B against A paired on the items both scored (change, its interval, p). The compare
    page showed bare differences before: a difference of 2 points on 30 items means nothing alone."""
    names: list[str] = []
    for it in items:
        for label in (a, b):
            for k in (it["outputs"].get(label) or {}).get("scores") or {}:
                if k not in names:
                    names.append(k)
    out = []
    for m in names:
        pairs = [
            (sa, sb)
            for it in items
            if isinstance(sa := ((it["outputs"].get(a) or {}).get("scores") or {}).get(m), (int, float))
            and isinstance(sb := ((it["outputs"].get(b) or {}).get("scores") or {}).get(m), (int, float))
        ]
        if not pairs:
            continue
        xa, xb = [p[0] for p in pairs], [p[1] for p in pairs]
        out.append(
            {
                "metric": m, "n": len(pairs),
                "a": sum(xa) / len(xa), "a_ci": list(bootstrap_ci(xa)),
                "b": sum(xb) / len(xb), "b_ci": list(bootstrap_ci(xb)),
                **paired_test(xb, xa),
            }
        )  # fmt: skip
    return out


def agreement(votes: dict[tuple[str, int], str]) -> list[dict]:
    """Cohen's kappa for each pair of reviewers over the items both judged."""
    by_reviewer: dict[str, dict[int, str]] = defaultdict(dict)
    for (reviewer, item), choice in votes.items():
        by_reviewer[reviewer][item] = choice
    out = []
    for r1, r2 in combinations(sorted(by_reviewer), 2):
        common = sorted(set(by_reviewer[r1]) & set(by_reviewer[r2]))
        if not common:
            continue
        x, y = [by_reviewer[r1][i] for i in common], [by_reviewer[r2][i] for i in common]
        agreed = sum(p == q for p, q in zip(x, y))
        out.append(
            {"reviewers": [r1, r2], "items": len(common), "agreed": agreed, "kappa": cohen_kappa(x, y)}
        )
    return out


def stats(reg: Registry, names: list[str] | None = None) -> dict:
    names = names or [q["name"] for q in queues(reg)]
    per_reviewer: dict[str, Counter] = defaultdict(Counter)
    out_queues = []
    for name in names:
        q = queue(reg, name)
        votes: dict[tuple[str, int], str] = {}
        ratings: dict[str, list[int]] = defaultdict(list)
        for j in judgements(reg, name):
            per_reviewer[j["reviewer"]][j["kind"]] += 1
            if j["kind"] == "ab":
                votes[(j["reviewer"], j["item"])] = j["choice"]  # oldest first: the newest vote stays
            elif j["kind"] == "rating":
                ratings[j["label"]].append(j["rating"])
        out_queues.append(
            {
                "queue": name,
                "ab": win_rate(q, votes),
                "ratings": {k: {"n": len(v), "mean": round(sum(v) / len(v), 2)} for k, v in ratings.items()},
                "agreement": agreement(votes),
            }
        )
    reviewers = {r: {k: c[k] for k in KINDS} for r, c in sorted(per_reviewer.items())}
    return {"reviewers": reviewers, "queues": out_queues}


def lines(s: dict) -> list[str]:
    """The stats as the terminal shows them."""
    out = ["judgements per reviewer (A/B, ratings, corrections)"]
    for r, c in s["reviewers"].items():
        out.append(f"  {r:<20} {c['ab']:>4} {c['rating']:>4} {c['correction']:>4}")
    if not s["reviewers"]:
        out.append("  none yet: `tunesmith ui` opens the review queue")
    for q in s["queues"]:
        ab = q["ab"]
        out.append(f"queue {q['queue']}: {ab['a']} vs {ab['b']}")
        if ab["a_win_rate"] is None:
            out.append(f"  A/B   no decisive votes yet ({ab['ties']} ties)")
        else:
            lo, hi = ab["interval"]
            out.append(
                f"  A/B   {ab['a']} preferred in {ab['a_wins']} of {ab['a_wins'] + ab['b_wins']} decisive "
                f"votes: {ab['a_win_rate']:.0%} [95 % interval {lo:.0%}, {hi:.0%}]; "
                f"{ab['b']} {ab['b_wins']}, ties {ab['ties']}"
            )
        for label, r in sorted(q["ratings"].items()):
            out.append(f"  rated {label}: mean {r['mean']:.2f} of 5 ({r['n']} ratings)")
        for a in q["agreement"]:
            kappa = (
                "kappa undefined (one label only)"
                if a["kappa"] is None
                else f"Cohen's kappa {a['kappa']:.2f}"
            )
            who = " / ".join(a["reviewers"])
            out.append(f"  agreement {who}: {a['agreed']} of {a['items']} items, {kappa}")
    return out
