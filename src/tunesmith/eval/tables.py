"""The tables `tunesmith eval` prints: one system before/after a baseline, several systems side by
side (a star where a paired test finds a difference from the first), and the probes' lines."""

from __future__ import annotations

import sys

from tunesmith.eval.rows import decimals
from tunesmith.eval.run import HEADLINE, rows_for
from tunesmith.eval.verdict import cost


def _ci(m: dict, key: str) -> str:
    ci, d = m.get("ci95", {}).get(key), decimals(key)
    return f" [{ci[0]:.{d}f}, {ci[1]:.{d}f}]" if ci else ""


def _value(m: dict, key: str) -> str:
    return f"{m[key]:.{decimals(key)}f}{_ci(m, key)}"


def print_table(results: dict, baseline: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    m = results["metrics"]
    refs = results.get("max_references", 1)
    several = f", {results.get('multi_reference', HEADLINE)} of up to {refs} references" if refs > 1 else ""
    t = Table(
        title=f"{results['system']} on {results['data']} ({results['n']} examples{several}; mean [95 % "
        "bootstrap CI])"
    )
    t.add_column("metric")
    tests = results.get("comparison")
    if baseline:
        b = baseline["metrics"]
        t.add_column(f"before ({baseline['system']})", justify="right")
        t.add_column(f"after ({results['system']})", justify="right")
        t.add_column("change", justify="right")
        if tests:
            t.add_column("paired test", justify="left")
    else:
        t.add_column("value", justify="right")
    for key, label in rows_for(m, baseline["metrics"] if baseline else {}):
        if key not in m:
            continue
        if baseline:
            before = b.get(key)
            change = "" if before is None else f"{m[key] - before:+.{decimals(key)}f}"
            row = [label, "-" if before is None else _value(b, key), _value(m, key), change]
            if tests:
                tst = tests.get(key)
                row.append(
                    ""
                    if not tst or tst["p"] is None
                    else (
                        f"significant (p={tst['p']:.3f})"
                        if tst["significant"]
                        else f"no significant difference (p={tst['p']:.2f})"
                    )
                )
            t.add_row(*row)
        else:
            t.add_row(label, _value(m, key))
    # piped into a log, rich would assume 80 columns and wrap every interval; logs can be wider
    Console(width=None if sys.stdout.isatty() else 130).print(t)
    if baseline and tests is None:
        print("(no paired test: the baseline scored other examples, or was written by an older version)")
    for note in results.get("notes", []):
        print(f"note: {note}")


def print_systems_table(runs: list[dict]) -> None:
    """One column per system; * marks a significant difference from the first system."""
    from rich.console import Console
    from rich.table import Table

    first = runs[0]
    t = Table(
        title=f"{len(runs)} systems on {first['data']} ({first['n']} examples)",
        caption=f"means; * = significantly different from {first['system']} (paired bootstrap, p<0.05); "
        "intervals in results.json and report.html",
    )
    t.add_column("metric")
    for r in runs:
        t.add_column(r["system"], justify="right")
    for key, label in rows_for(*(r["metrics"] for r in runs)):
        if not any(key in r["metrics"] for r in runs):
            continue
        cells = []
        for r in runs:
            if key not in r["metrics"]:
                cells.append("-")
                continue
            test = (r.get("comparisons") or {}).get(first["system"], {}).get(key) if r is not first else None
            star = "*" if test and test.get("significant") else ""
            cells.append(f"{r['metrics'][key]:.{decimals(key)}f}{star}")
        t.add_row(label, *cells)
    costs = [cost(r) for r in runs]
    t.add_row("prompt tokens / answer", *(f"{c['prompt_tokens']:,.0f}" for c in costs))
    t.add_row("seconds / answer", *(f"{c['seconds']:.2f}" for c in costs))
    Console(width=None if sys.stdout.isatty() else 130).print(t)


def print_probe(key: str, rep: dict) -> None:
    if key == "memorization":
        print(
            f"memorization: {rep['metric']} {rep['train']:.1f} on {rep['n_train']} training examples vs "
            f"{rep['held_out']:.1f} held out (gap {rep['gap']:+.1f}, 95 % interval {rep['gap_ci95'][0]:+.1f} "
            f"to {rep['gap_ci95'][1]:+.1f})"
        )
    else:
        b, a = rep["before"], rep["after"]
        print(
            f"forgetting ({b['n']} general questions): answer perplexity {b['perplexity']:.2f} -> "
            f"{a['perplexity']:.2f} "
            f"({rep['perplexity_ratio']:.2f}x), answer found {b['contains_answer']:.0f}% -> "
            f"{a['contains_answer']:.0f}%, "
            f"token F1 {b['token_f1']:.1f} -> {a['token_f1']:.1f}"
        )
    if rep.get("warning"):
        print(f"warning: {rep['warning']}")
