"""`tunesmith eval`: generate on held-out examples, score, print a table, write results.json."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from tunesmith.atomic import write_json
from tunesmith.cli import DEFAULT_MODEL
from tunesmith.data.formats import load_examples
from tunesmith.errors import UserError
from tunesmith.eval.metrics import TEXT_METRICS, scores
from tunesmith.eval.stats import bootstrap_ci, paired_test
from tunesmith.eval.style import check_style, load_style

# Rows of the table, in order: key in results["metrics"], label.
ROWS = [(k, k.replace("_", " ")) for k in TEXT_METRICS] + [
    ("format_adherence", "format adherence %"),
    ("stopped_by_eos", "stopped by itself %"),
    ("mean_new_tokens", "mean new tokens"),
]


def split_prompt(messages: list[dict], system: str | None = None) -> tuple[list[dict], str]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = list(messages[:last])
    if system is not None:
        prompt = [m for m in prompt if m["role"] != "system"]
        prompt.insert(0, {"role": "system", "content": system})
    return prompt, messages[last]["content"]


def per_example_values(per: list[dict], key: str) -> list[float]:
    if key in TEXT_METRICS:
        return [r["scores"][key] for r in per]
    if key == "format_adherence":
        return [100.0 * r["format_ok"] for r in per]
    if key == "stopped_by_eos":
        return [100.0 * r["stopped"] for r in per]
    return [float(r["new_tokens"]) for r in per]


def score(outputs, references, rules) -> tuple[dict, list[dict]]:
    """Per-example scores, their means, and a bootstrap 95 % interval for each mean."""
    per = []
    for gen, ref in zip(outputs, references):
        row = {"scores": scores(gen.text, ref), "stopped": gen.stopped, "new_tokens": gen.new_tokens}
        if rules:
            checks = check_style(rules, gen.text)
            row["style"] = checks
            row["format_ok"] = all(checks.values())
        per.append(row)
    n = len(per)
    keys = [k for k, _ in ROWS if rules or k != "format_adherence"]
    values = {k: per_example_values(per, k) for k in keys}
    agg = {k: round(statistics.fmean(v), 2) for k, v in values.items()}
    agg["ci95"] = {k: bootstrap_ci(v) for k, v in values.items()}
    if rules:
        agg["style_rules"] = {r.name: round(100 * sum(p["style"][r.name] for p in per) / n, 1) for r in rules}
    return agg, per


def compare(results: dict, baseline: dict) -> dict | None:
    """Paired test per metric, when both runs scored the same examples in the same order."""
    a, b = results["examples"], baseline.get("examples") or []
    if [(x["path"], x["line"]) for x in a] != [(x["path"], x["line"]) for x in b] or "scores" not in (b[0] if b else {}):
        return None
    return {k: paired_test(per_example_values(a, k), per_example_values(b, k))
            for k, _ in ROWS if k in results["metrics"] and k in baseline["metrics"]}


def _ci(m: dict, key: str) -> str:
    ci = m.get("ci95", {}).get(key)
    return f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""


def print_table(results: dict, baseline: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    m = results["metrics"]
    t = Table(title=f"{results['system']} on {results['data']} ({results['n']} examples; mean [95 % bootstrap CI])")
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
    for key, label in ROWS:
        if key not in m:
            continue
        if baseline:
            before = b.get(key)
            change = "" if before is None else f"{m[key] - before:+.1f}"
            row = [label, "-" if before is None else f"{before:.1f}{_ci(b, key)}", f"{m[key]:.1f}{_ci(m, key)}", change]
            if tests:
                tst = tests.get(key)
                row.append("" if not tst or tst["p"] is None else
                           (f"significant (p={tst['p']:.3f})" if tst["significant"] else f"no significant difference (p={tst['p']:.2f})"))
            t.add_row(*row)
        else:
            t.add_row(label, f"{m[key]:.1f}{_ci(m, key)}")
    # piped into a log, rich would assume 80 columns and wrap every interval; logs can be wider
    Console(width=None if sys.stdout.isatty() else 130).print(t)
    if baseline and tests is None:
        print("(no paired test: the baseline scored other examples, or was written by an older version)")


def cli_eval(args) -> int:
    from tunesmith.modeling import base_model_of, check_adapter_dir, generate, load

    if args.adapter:
        check_adapter_dir(args.adapter)
    spec = base_model_of(args.adapter, args.model, DEFAULT_MODEL)
    examples = load_examples(args.data, "--data")
    if args.limit:
        examples = examples[: args.limit]
    rules = load_style(args.style) if args.style else []
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(Path(args.baseline).read_text())
            baseline["metrics"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"--baseline {args.baseline}: not a results.json written by `tunesmith eval`") from None
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise UserError("--max-new-tokens and --batch-size must be at least 1")
    loaded = load(spec, args.adapter, trust_remote_code=args.trust_remote_code, quiet=args.quiet)
    prompts, refs = zip(*(split_prompt(ex.messages, args.system) for ex in examples))
    t0 = time.time()

    def on_batch(done, tokens):
        if not args.quiet:
            el = time.time() - t0
            print(f"  generated {done}/{len(prompts)} ({tokens / el:.0f} new tokens/s)", file=sys.stderr)

    outs = generate(loaded.model, loaded.tokenizer, list(prompts), max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size, on_batch=on_batch)
    wall = time.time() - t0
    agg, per = score(outs, refs, rules)
    results = {
        "system": "tuned" if args.adapter else "base",
        "model": spec,
        "adapter": str(args.adapter) if args.adapter else None,
        "data": str(args.data),
        "n": len(outs),
        "decoding": {"greedy": True, "max_new_tokens": args.max_new_tokens, "system_prompt": args.system},
        "style": args.style,
        "generation_s": round(wall, 1),
        "new_tokens_per_s": round(sum(o.new_tokens for o in outs) / wall, 1),
        "metrics": agg,
        "examples": [
            {"path": ex.path, "line": ex.line, "reference": ref, "output": o.text, **row}
            for ex, ref, o, row in zip(examples, refs, outs, per)
        ],
    }
    if baseline:
        results["comparison"] = compare(results, baseline)
    if args.out:
        write_json(Path(args.out) / "results.json", results)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        print_table(results, baseline)
        if args.out:
            print(f"wrote {Path(args.out) / 'results.json'}")
    return 0
